//! A run's output as whole lines, each prefixed with its server's name (`web-1  | line`),
//! the names padded to the longest of the run and, on a terminal, coloured per host.
//!
//! Pure: [`Prefixer`] turns the stream's `output` events into text to write and never
//! writes itself, so the splitting, the padding and the colours are tested on their own.
//! A line split across events is held back until its end comes (or its host completes):
//! one buffer per host and per stream, so stdout and stderr never mix inside a line.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use serde_json::Value;

/// The colours of the prefixes, one per host in the order of their positions, cycling:
/// ANSI foreground codes, the normal ones then the bright ones (no red: it reads as an error).
pub const PALETTE: [u8; 10] = [36, 33, 32, 35, 34, 96, 93, 92, 95, 94];

/// Where a piece of text goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dest {
    Stdout,
    Stderr,
}

impl Dest {
    /// The stream of an `output` event (`stream`, or the older `is_stderr`).
    fn of(data: &Value) -> Dest {
        match data["stream"].as_str() {
            Some("stderr") => Dest::Stderr,
            None if data["is_stderr"] == true => Dest::Stderr,
            _ => Dest::Stdout,
        }
    }
}

/// Whether to colour what goes to each stream: only a terminal, and never when `NO_COLOR`
/// is set (<https://no-color.org>).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Colours {
    pub stdout: bool,
    pub stderr: bool,
}

impl Colours {
    /// Colours for this process's stdout and stderr.
    pub fn detect() -> Colours {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Colours::choose(
            no_color,
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
        )
    }

    /// The choice itself: a terminal gets colours unless `NO_COLOR` says otherwise.
    pub fn choose(no_color: bool, stdout_tty: bool, stderr_tty: bool) -> Colours {
        Colours {
            stdout: stdout_tty && !no_color,
            stderr: stderr_tty && !no_color,
        }
    }

    fn on(self, dest: Dest) -> bool {
        match dest {
            Dest::Stdout => self.stdout,
            Dest::Stderr => self.stderr,
        }
    }
}

/// One host of the run, as its lines show it.
#[derive(Debug)]
struct Host {
    name: String,
    /// ANSI colour code of its prefix.
    colour: u8,
    /// The start of a line not ended yet, per stream.
    partial: BTreeMap<Dest, String>,
    /// The highest output sequence number shown: an event below it was shown already (a
    /// stream replayed from the start must not print a line twice). One equal to it is new:
    /// the service sends what a host's output ended with (bytes of a character never
    /// finished) under its last number.
    shown_seq: i64,
}

impl Host {
    /// The host at `index` in the run's order, named `name`.
    fn new(name: String, index: usize) -> Host {
        Host {
            name,
            colour: PALETTE[index % PALETTE.len()],
            partial: BTreeMap::new(),
            shown_seq: -1,
        }
    }
}

/// Turns a run's output events into prefixed lines.
#[derive(Debug)]
pub struct Prefixer {
    /// Hosts by position in the run.
    hosts: BTreeMap<i64, Host>,
    /// The width names are padded to.
    width: usize,
    colours: Colours,
}

/// The position of the host an event is about (its `position`, else its server's place in
/// the run's host list is unknown: -1).
fn position(data: &Value) -> i64 {
    data["position"].as_i64().unwrap_or(-1)
}

/// The name to show for a host: its server's name, else the start of its server's id.
pub fn host_name(host: &Value) -> String {
    if let Some(name) = host["server_name"].as_str().filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    let id = host["server_id"].as_str().unwrap_or("?");
    id.chars().take(8).collect()
}

impl Prefixer {
    /// A prefixer for `run` (a run object: its `hosts` give the names, the width and the
    /// colours, in the order of their positions).
    pub fn new(run: &Value, colours: Colours) -> Prefixer {
        let mut p = Prefixer {
            hosts: BTreeMap::new(),
            width: 0,
            colours,
        };
        let mut hosts: Vec<&Value> = run["hosts"].as_array().into_iter().flatten().collect();
        hosts.sort_by_key(|h| position(h));
        for (i, h) in hosts.into_iter().enumerate() {
            p.add(position(h), host_name(h), i);
        }
        p
    }

    fn add(&mut self, position: i64, name: String, index: usize) {
        self.width = self.width.max(name.chars().count());
        self.hosts.insert(position, Host::new(name, index));
    }

    /// The host an event is about; one the run did not list is added (its name from the
    /// event, the next colour).
    fn host(&mut self, data: &Value) -> &mut Host {
        let index = self.hosts.len();
        let width = &mut self.width;
        self.hosts.entry(position(data)).or_insert_with(|| {
            let name = host_name(data);
            *width = (*width).max(name.chars().count());
            Host::new(name, index)
        })
    }

    /// The prefix of a line of `host` going to `dest`: `name  | ` (padded), coloured when
    /// that stream is a terminal.
    fn prefix(width: usize, colours: Colours, host: &Host, dest: Dest) -> String {
        let name = &host.name;
        if colours.on(dest) {
            format!("\x1b[{}m{name:<width$} |\x1b[0m ", host.colour)
        } else {
            format!("{name:<width$} | ")
        }
    }

    /// An `output` event: the lines it completes, prefixed, as one piece of text for its
    /// stream (nothing while a line is still open).
    pub fn output(&mut self, data: &Value) -> Vec<(Dest, String)> {
        let (width, colours) = (self.width, self.colours);
        let dest = Dest::of(data);
        let text = data["output"].as_str().unwrap_or("");
        let host = self.host(data);
        if let Some(seq) = data["seq"].as_i64() {
            if seq < host.shown_seq {
                return Vec::new();
            }
            host.shown_seq = seq;
        }
        let buf = host.partial.entry(dest).or_default();
        buf.push_str(text);
        let Some(end) = buf.rfind('\n') else {
            return Vec::new();
        };
        let rest = buf.split_off(end + 1);
        let done = std::mem::replace(buf, rest);
        let prefix = Self::prefix(width, colours, host, dest);
        let mut out = String::with_capacity(done.len() + prefix.len() * 2);
        for line in done.split_inclusive('\n') {
            out.push_str(&prefix);
            out.push_str(line);
        }
        vec![(dest, out)]
    }

    /// The lines a host left open, ended (at its `host_complete`).
    pub fn flush_host(&mut self, data: &Value) -> Vec<(Dest, String)> {
        let (width, colours) = (self.width, self.colours);
        let host = self.host(data);
        Self::flush(width, colours, host)
    }

    /// Every line still open, ended (at the run's end).
    pub fn flush_all(&mut self) -> Vec<(Dest, String)> {
        let (width, colours) = (self.width, self.colours);
        let hosts = self.hosts.values_mut();
        hosts.flat_map(|h| Self::flush(width, colours, h)).collect()
    }

    fn flush(width: usize, colours: Colours, host: &mut Host) -> Vec<(Dest, String)> {
        let open = std::mem::take(&mut host.partial);
        open.into_iter()
            .filter(|(_, text)| !text.is_empty())
            .map(|(dest, text)| {
                let prefix = Self::prefix(width, colours, host, dest);
                (dest, format!("{prefix}{text}\n"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(names: &[&str]) -> Value {
        let hosts: Vec<Value> = (names.iter().enumerate())
            .map(|(i, n)| json!({"position": i, "server_id": format!("id-{i}"), "server_name": n}))
            .collect();
        json!({ "hosts": hosts })
    }

    fn out(pos: i64, seq: i64, stream: &str, text: &str) -> Value {
        json!({"position": pos, "seq": seq, "stream": stream, "is_stderr": stream == "stderr", "output": text})
    }

    #[test]
    fn names_are_padded_to_the_longest_of_the_run() {
        let mut p = Prefixer::new(&run(&["web-1", "db-primary", "x"]), Colours::default());
        assert_eq!(
            p.output(&out(0, 0, "stdout", "hi\n")),
            [(Dest::Stdout, "web-1      | hi\n".to_string())]
        );
        assert_eq!(
            p.output(&out(2, 0, "stdout", "a\nb\n")),
            [(Dest::Stdout, "x          | a\nx          | b\n".to_string())]
        );
        assert_eq!(
            p.output(&out(1, 0, "stderr", "oops\n")),
            [(Dest::Stderr, "db-primary | oops\n".to_string())]
        );
    }

    #[test]
    fn a_line_split_across_events_prints_whole() {
        let mut p = Prefixer::new(&run(&["a", "b"]), Colours::default());
        assert!(p.output(&out(0, 0, "stdout", "hel")).is_empty());
        // Another host's line and the same host's stderr do not break into it.
        assert_eq!(
            p.output(&out(1, 0, "stdout", "other\n")),
            [(Dest::Stdout, "b | other\n".to_string())]
        );
        assert!(p.output(&out(0, 1, "stderr", "warn")).is_empty());
        assert_eq!(
            p.output(&out(0, 2, "stdout", "lo\nwor")),
            [(Dest::Stdout, "a | hello\n".to_string())]
        );
        assert_eq!(
            p.output(&out(0, 3, "stdout", "ld\n")),
            [(Dest::Stdout, "a | world\n".to_string())]
        );
        // A host's end flushes what it left open, one line end added.
        assert!(p.output(&out(0, 4, "stdout", "no end")).is_empty());
        let host = json!({"position": 0, "server_name": "a"});
        assert_eq!(
            p.flush_host(&host),
            [
                (Dest::Stdout, "a | no end\n".to_string()),
                (Dest::Stderr, "a | warn\n".to_string()),
            ]
        );
        assert!(p.flush_host(&host).is_empty());
        assert!(p.output(&out(1, 1, "stdout", "tail")).is_empty());
        assert_eq!(p.flush_all(), [(Dest::Stdout, "b | tail\n".to_string())]);
    }

    #[test]
    fn empty_lines_and_sequence_numbers_already_shown() {
        let mut p = Prefixer::new(&run(&["a"]), Colours::default());
        assert_eq!(
            p.output(&out(0, 0, "stdout", "\n\nx\n")),
            [(Dest::Stdout, "a | \na | \na | x\n".to_string())]
        );
        assert_eq!(
            p.output(&out(0, 2, "stdout", "y\n")),
            [(Dest::Stdout, "a | y\n".to_string())]
        );
        assert!(
            p.output(&out(0, 1, "stdout", "old\n")).is_empty(),
            "seq 1 is past"
        );
        // The end of a host's output may come under its last number again.
        assert!(p.output(&out(0, 2, "stdout", "\u{FFFD}")).is_empty());
        assert_eq!(
            p.flush_all(),
            [(Dest::Stdout, "a | \u{FFFD}\n".to_string())]
        );
    }

    #[test]
    fn a_host_the_run_did_not_list_gets_its_own_name() {
        let mut p = Prefixer::new(&json!({"hosts": []}), Colours::default());
        let data = json!({"position": 5, "server_id": "0123456789ab", "output": "x\n"});
        assert_eq!(
            p.output(&data),
            [(Dest::Stdout, "01234567 | x\n".to_string())]
        );
    }

    #[test]
    fn colours_cycle_per_host_and_only_on_a_terminal() {
        let names: Vec<String> = (0..12).map(|i| format!("h{i:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let colours = Colours {
            stdout: true,
            stderr: false,
        };
        let mut p = Prefixer::new(&run(&names), colours);
        let line = |p: &mut Prefixer, pos: i64, stream: &str| {
            p.output(&out(pos, 0, stream, "x\n")).remove(0).1
        };
        assert_eq!(line(&mut p, 0, "stdout"), "\x1b[36mh00 |\x1b[0m x\n");
        assert_eq!(line(&mut p, 1, "stdout"), "\x1b[33mh01 |\x1b[0m x\n");
        assert_eq!(line(&mut p, 10, "stdout"), "\x1b[36mh10 |\x1b[0m x\n");
        assert_eq!(
            line(&mut p, 11, "stderr"),
            "h11 | x\n",
            "stderr is not a tty"
        );

        assert_eq!(Colours::choose(false, true, false), colours);
        assert_eq!(Colours::choose(true, true, true), Colours::default());
        assert_eq!(Colours::choose(false, false, false), Colours::default());
    }
}
