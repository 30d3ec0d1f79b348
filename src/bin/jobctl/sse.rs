//! A small Server-Sent Events parser: feed it bytes as they arrive, get whole events.
//!
//! Lines end with `\n`, `\r\n` or `\r`; a blank line ends an event; lines starting with `:`
//! are comments (keep-alives); `field: value` loses one space after the colon; several
//! `data` lines are joined with `\n`. An event or a line split across chunks (even inside a
//! UTF-8 character) is kept until its end arrives.

/// One event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    /// `id:` of the event, if it had one.
    pub id: Option<String>,
    /// `event:` (`message` when absent).
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The parser's state between chunks.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// The last byte seen was `\r` (a following `\n` belongs to the same line end).
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// Feed a chunk; returns the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' => self.end_line(&mut out),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut out);
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    fn end_line(&mut self, out: &mut Vec<Event>) {
        let line = std::mem::take(&mut self.line);
        let line = String::from_utf8_lossy(&line);
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(Event {
                    id: self.id.take(),
                    event: self.event.take().unwrap_or_else(|| "message".into()),
                    data,
                });
            } else {
                self.id = None;
                self.event = None;
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, event: &str, data: &str) -> Event {
        Event {
            id: Some(id.into()),
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn whole_events_and_comments() {
        let mut p = Parser::default();
        let got = p.push(
            b": keep-alive\n\nid: -1\nevent: status\ndata: {\"a\":1}\n\nid: 0\nevent: output\ndata: x\n\n",
        );
        assert_eq!(
            got,
            vec![ev("-1", "status", "{\"a\":1}"), ev("0", "output", "x")]
        );
    }

    #[test]
    fn events_split_anywhere_across_chunks() {
        let text = "id: 3\r\nevent: output\r\ndata: {\"output\":\"h\u{e9}llo\"}\r\n\r\nid: 4\nevent: complete\ndata: {}\n\n";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut p = Parser::default();
            let mut got = p.push(&bytes[..split]);
            got.extend(p.push(&bytes[split..]));
            assert_eq!(
                got,
                vec![
                    ev("3", "output", "{\"output\":\"h\u{e9}llo\"}"),
                    ev("4", "complete", "{}")
                ],
                "split at {split}"
            );
        }
        // One byte at a time.
        let mut p = Parser::default();
        let got: Vec<Event> = bytes.iter().flat_map(|b| p.push(&[*b])).collect();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn multi_line_data_and_defaults() {
        let mut p = Parser::default();
        let got = p.push(b"data: a\ndata:b\nunknown: z\n\n");
        assert_eq!(
            got,
            vec![Event {
                id: None,
                event: "message".into(),
                data: "a\nb".into()
            }]
        );
        // An event without data is not dispatched.
        assert!(p.push(b"event: nothing\n\n").is_empty());
    }
}
