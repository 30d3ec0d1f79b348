// The job log viewer: one job's output, live, in a bounded amount of memory.
//
//   import { LogViewer } from './logview.js';
//   const v = new LogViewer(container, { jobId, apiBase: '/api/v1' });
//   v.destroy();
//
// How it works. The output is read as bytes by range (GET {apiBase}/jobs/{id}/output?offset=
// &limit=, records of [stream u8][length u32 BE][bytes]) and scanned once into a compact index:
// where each line starts (a Float64Array of byte offsets) and its stream (a Uint8Array). Only
// the index is kept for the whole log; the text of the lines on screen (plus a margin) is
// fetched by range as the user scrolls, decoded, and kept in a small cache. The DOM holds only
// those lines (virtual scrolling), so a 64 MiB log costs its index, not its text.
//
// A running job is followed over its SSE stream (GET {apiBase}/jobs/{id}/stream?after=SEQ):
// its events only say "there is more" (and the job's status); the bytes themselves always come
// from range reads at the end of what was indexed, so a dropped and resumed stream can neither
// duplicate nor lose a line.
//
// Lines: a line ends at "\n", where the stream changes (stdout and stderr are told apart line
// by line), or after SOFT_LINE bytes (a line longer than that is shown in pieces). Each line is
// drawn in the default colours: SGR state does not carry from one line to the next.
//
// The log is untrusted: its text only ever reaches the DOM through textContent.

const RANGE = 2 * 1024 * 1024; // bytes per range read (the server allows up to 4 MiB)
const SOFT_LINE = 8 * 1024; // longest line, in bytes, before it is cut
const LINE_HEIGHT = 18; // px, fixed: logview.css sets the same height on .log-line
const MAX_SCROLL_PX = 8000000; // below every browser's largest element height
const MARGIN = 40; // lines rendered above and below the visible ones
const CACHE_BYTES = 4 * 1024 * 1024; // decoded lines kept, by their byte length
const TAIL_KEEP = 400; // lines at the end of each range read kept decoded (follow-tail)
const RETRY_MS = 150; // when the stream announced output not stored yet

const RETRIES = 40; // of those, after the job ended (then what is stored is all there is)

/// The 256-colour palette's colour `n` (16..255) as CSS.
function palette(n) {
  if (n < 232) {
    const v = n - 16;
    const level = (c) => (c === 0 ? 0 : 55 + c * 40);
    return `rgb(${level(Math.floor(v / 36))}, ${level(Math.floor(v / 6) % 6)}, ${level(v % 6)})`;
  }
  const g = 8 + (n - 232) * 10;
  return `rgb(${g}, ${g}, ${g})`;
}

/// A fresh SGR state.
function plain() {
  return { fg: -1, bg: -1, fgCss: '', bgCss: '', bold: false, dim: false, italic: false, underline: false };
}

/// Apply one SGR parameter list to `st`.
function sgr(st, params) {
  const p = params.length ? params : [0];
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === 0) Object.assign(st, plain());
    else if (c === 1) st.bold = true;
    else if (c === 2) st.dim = true;
    else if (c === 3) st.italic = true;
    else if (c === 4) st.underline = true;
    else if (c === 22) { st.bold = false; st.dim = false; }
    else if (c === 23) st.italic = false;
    else if (c === 24) st.underline = false;
    else if (c >= 30 && c <= 37) { st.fg = c - 30; st.fgCss = ''; }
    else if (c >= 90 && c <= 97) { st.fg = c - 90 + 8; st.fgCss = ''; }
    else if (c === 39) { st.fg = -1; st.fgCss = ''; }
    else if (c >= 40 && c <= 47) { st.bg = c - 40; st.bgCss = ''; }
    else if (c >= 100 && c <= 107) { st.bg = c - 100 + 8; st.bgCss = ''; }
    else if (c === 49) { st.bg = -1; st.bgCss = ''; }
    else if (c === 38 || c === 48) {
      let idx = -1;
      let css = '';
      if (p[i + 1] === 5 && i + 2 < p.length) {
        const n = p[i + 2] & 255;
        if (n < 16) idx = n; else css = palette(n);
        i += 2;
      } else if (p[i + 1] === 2 && i + 4 < p.length) {
        const [r, g, b] = [p[i + 2] & 255, p[i + 3] & 255, p[i + 4] & 255];
        css = `rgb(${r}, ${g}, ${b})`;
        i += 4;
      } else {
        break; // malformed: ignore the rest
      }
      if (c === 38) { st.fg = idx; st.fgCss = css; } else { st.bg = idx; st.bgCss = css; }
    }
  }
}

/// The text of one line as drawn: its runs [{t, st}] (escape sequences and control
/// characters dropped, SGR applied; a bare \r keeps what follows it, as a terminal shows).
export function parseLine(raw) {
  let s = raw;
  if (s.endsWith('\n')) s = s.slice(0, -1);
  if (s.endsWith('\r')) s = s.slice(0, -1);
  const cr = s.lastIndexOf('\r');
  if (cr >= 0) s = s.slice(cr + 1);
  const runs = [];
  let st = plain();
  let text = '';
  const flush = () => {
    if (text) runs.push({ t: text, st: { ...st } });
    text = '';
  };
  const n = s.length;
  let i = 0;
  while (i < n) {
    const ch = s.charCodeAt(i);
    if (ch === 0x1b) {
      const next = s.charCodeAt(i + 1);
      if (next === 0x5b) { // CSI: ESC [ params intermediates final
        let j = i + 2;
        while (j < n && s.charCodeAt(j) >= 0x30 && s.charCodeAt(j) <= 0x3f) j++;
        const params = s.slice(i + 2, j);
        while (j < n && s.charCodeAt(j) >= 0x20 && s.charCodeAt(j) <= 0x2f) j++;
        if (j >= n) { i = n; break; } // unterminated: drop it
        const fin = s.charCodeAt(j);
        if (fin === 0x6d && /^[0-9;:]*$/.test(params)) { // 'm': SGR
          flush();
          sgr(st, params === '' ? [] : params.split(/[;:]/).map((x) => (x === '' ? 0 : parseInt(x, 10))));
        }
        i = j + 1;
      } else if (next === 0x5d || next === 0x50 || next === 0x58 || next === 0x5e || next === 0x5f) {
        // OSC, DCS, SOS, PM, APC: up to BEL or ST (ESC \)
        let j = i + 2;
        while (j < n) {
          const c = s.charCodeAt(j);
          if (c === 0x07) { j += 1; break; }
          if (c === 0x1b && s.charCodeAt(j + 1) === 0x5c) { j += 2; break; }
          j++;
        }
        i = j;
      } else {
        // ESC, intermediates, one final character (charset selection, keypad modes, ...)
        let j = i + 1;
        while (j < n && s.charCodeAt(j) >= 0x20 && s.charCodeAt(j) <= 0x2f) j++;
        i = j + 1;
      }
    } else if (ch === 0x9b) { // C1 CSI
      let j = i + 1;
      while (j < n && !(s.charCodeAt(j) >= 0x40 && s.charCodeAt(j) <= 0x7e)) j++;
      i = j + 1;
    } else if ((ch < 0x20 && ch !== 0x09) || ch === 0x7f) {
      i++; // other control characters: dropped
    } else {
      let j = i + 1;
      while (j < n) {
        const c = s.charCodeAt(j);
        if (c === 0x1b || c === 0x9b || (c < 0x20 && c !== 0x09) || c === 0x7f) break;
        j++;
      }
      text += s.slice(i, j);
      i = j;
    }
  }
  flush();
  return runs;
}

/// An element `tag` with class `cls` and text `text` (textContent: never HTML).
/// Ids of the search boxes made so far (one per viewer).
let searchIds = 0;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/// A run's element: the 16 colours by class, 256/true colours through CSSOM.
function runElement(tag, run, extra) {
  const { st } = run;
  const cls = [];
  if (st.fg >= 0) cls.push(`ansi-fg-${st.fg}`);
  if (st.bg >= 0) cls.push(`ansi-bg-${st.bg}`);
  if (st.bold) cls.push('ansi-bold');
  if (st.dim) cls.push('ansi-dim');
  if (st.italic) cls.push('ansi-italic');
  if (st.underline) cls.push('ansi-underline');
  if (extra) cls.push(extra);
  const e = el(tag, cls.join(' '), run.t);
  if (st.fgCss) e.style.color = st.fgCss;
  if (st.bgCss) e.style.backgroundColor = st.bgCss;
  return e;
}

/// ASCII lower case of byte `b`.
const lower = (b) => (b >= 65 && b <= 90 ? b | 0x20 : b);

/// Whether `needle` (lower-cased) occurs in `hay[from, to)`, ASCII case-insensitively.
function hasBytes(hay, from, to, needle) {
  const m = needle.length;
  const first = needle[0];
  const last = to - m;
  for (let i = from; i <= last; i++) {
    if (lower(hay[i]) !== first) continue;
    let k = 1;
    while (k < m && lower(hay[i + k]) === needle[k]) k++;
    if (k === m) return true;
  }
  return false;
}

/// A growable typed array.
class Grow {
  constructor(Kind, cap = 1024) { this.Kind = Kind; this.a = new Kind(cap); this.n = 0; }
  push(v) {
    if (this.n === this.a.length) {
      const b = new this.Kind(this.a.length * 2);
      b.set(this.a);
      this.a = b;
    }
    this.a[this.n++] = v;
  }
  clear() { this.a = new this.Kind(1024); this.n = 0; }
}

/// Index of the first element of sorted `a[0, n)` that is >= `v`.
function lowerBound(a, n, v) {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

export class LogViewer {
  /// Mount a viewer of job `jobId` in `container` (emptied); it fetches what it needs itself.
  constructor(container, { jobId, apiBase = '/api/v1' } = {}) {
    this.container = container;
    this.jobId = jobId;
    this.api = `${apiBase}/jobs/${encodeURIComponent(jobId)}`;
    this.destroyed = false;
    this.abort = new AbortController();
    this.timers = new Set();

    // The index: where each line starts in the combined output, and its stream (0/1).
    this.starts = new Grow(Float64Array);
    this.streams = new Grow(Uint8Array);
    this.end = 0; // bytes indexed
    this.open = false; // the last line may still grow
    this.openStream = 0;
    this.openLen = 0;
    this.total = 0; // the output's length at the last range read
    this.haveSeq = -1; // last chunk seq stored at the last range read
    this.wantSeq = -1; // last seq the stream announced
    this.status = '';
    this.prunedAt = null; // when retention deleted the output, if it did
    this.finished = false; // the job ended (its final output may still be read)
    this.retries = 0;

    // What is shown: both streams, or the rows of one (line numbers).
    this.show = { 0: true, 1: true };
    this.rows = null; // Grow(Uint32Array) when a filter is on

    this.cache = new Map(); // line -> { runs, bytes }
    this.cacheBytes = 0;
    this.dom = new Map(); // line -> element
    this.textWanted = null; // [first, last] lines a render could not draw
    this.fetchingText = false;

    this.follow = true;
    this.search = { query: '', needle: null, hits: new Grow(Uint32Array), scanned: 0, cur: -1, running: false, gen: 0 };

    this.pumping = false;
    this.pumpAgain = false;
    this.source = null;
    this.lastEventId = -1;

    this._build();
    this._setState('loading');
    this._start();
  }

  /// Lines known (the index's length).
  get lineCount() { return this.starts.n; }

  /// Lines currently in the DOM.
  get renderedLineCount() { return this.linesEl.querySelectorAll('.log-line').length; }

  /// Close the stream, stop every timer and fetch, remove what the viewer added.
  destroy() {
    if (this.destroyed) return;
    this.destroyed = true;
    this._closeStream();
    this.abort.abort();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    if (this.resizeObserver) this.resizeObserver.disconnect();
    for (const [target, type, fn] of this.listeners) target.removeEventListener(type, fn);
    this.listeners = [];
    if (this.raf) cancelAnimationFrame(this.raf);
    this.container.replaceChildren();
    this.container.classList.remove('logview');
    this.cache.clear();
    this.dom.clear();
  }

  // ---- DOM ----

  _on(target, type, fn) {
    target.addEventListener(type, fn);
    this.listeners.push([target, type, fn]);
  }

  _build() {
    this.listeners = [];
    const c = this.container;
    c.replaceChildren();
    c.classList.add('logview');

    const bar = el('div', 'lv-toolbar');
    bar.setAttribute('role', 'toolbar');
    bar.setAttribute('aria-label', 'Log tools');

    const filter = (stream, name) => {
      const label = el('label', `lv-filter lv-filter-${name}`);
      const box = el('input');
      box.type = 'checkbox';
      box.checked = true;
      box.name = name;
      this._on(box, 'change', () => this._setFilter(stream, box.checked));
      label.append(box, document.createTextNode(` ${name}`));
      return [label, box];
    };
    const [outLabel, outBox] = filter(0, 'stdout');
    const [errLabel, errBox] = filter(1, 'stderr');
    this.stdoutBox = outBox;
    this.stderrBox = errBox;

    const search = el('span', 'lv-search');
    this.searchInput = el('input', 'lv-search-input');
    this.searchInput.type = 'search';
    this.searchInput.placeholder = 'Search the whole log';
    this.searchInput.setAttribute('aria-label', 'Search the log (Enter: next, Shift+Enter: previous)');
    this.prevBtn = el('button', 'lv-prev', '↑');
    this.prevBtn.type = 'button';
    this.prevBtn.title = 'Previous hit (Shift+Enter)';
    this.prevBtn.setAttribute('aria-label', 'Previous hit');
    this.nextBtn = el('button', 'lv-next', '↓');
    this.nextBtn.type = 'button';
    this.nextBtn.title = 'Next hit (Enter)';
    this.nextBtn.setAttribute('aria-label', 'Next hit');
    this.hitInfo = el('span', 'lv-hits', '');
    this.hitInfo.setAttribute('aria-live', 'polite');
    // A real label (read by screen readers, hidden on screen) tied to the box by id.
    this.searchInput.id = `lv-search-${++searchIds}`;
    const searchLabel = el('label', 'lv-visually-hidden', 'Search the log');
    searchLabel.htmlFor = this.searchInput.id;
    search.append(searchLabel, this.searchInput, this.prevBtn, this.nextBtn, this.hitInfo);
    this._on(this.searchInput, 'keydown', (e) => {
      if (e.key === 'Enter') {
        e.preventDefault();
        this._searchStep(e.shiftKey ? -1 : 1);
      } else if (e.key === 'Escape') {
        this.searchInput.value = '';
        this._startSearch('');
      }
    });
    this._on(this.prevBtn, 'click', () => this._searchStep(-1));
    this._on(this.nextBtn, 'click', () => this._searchStep(1));

    this.followBtn = el('button', 'lv-follow', 'Follow');
    this.followBtn.type = 'button';
    this.followBtn.title = 'Keep the newest lines in view';
    this._on(this.followBtn, 'click', () => this._setFollow(!this.follow, true));

    const links = el('span', 'lv-links');
    const link = (path, text, file) => {
      const a = el('a', 'lv-download', text);
      a.href = `${this.api}/${path}`;
      a.setAttribute('download', file);
      return a;
    };
    links.append(
      link('stdout', 'stdout', `${this.jobId}.stdout.txt`),
      link('stderr', 'stderr', `${this.jobId}.stderr.txt`),
      link('logs', 'json', `${this.jobId}.logs.json`),
    );
    links.prepend(document.createTextNode('Raw: '));

    this.info = el('span', 'lv-info', '');
    this.info.setAttribute('aria-live', 'off');

    bar.append(outLabel, errLabel, search, this.followBtn, links, this.info);

    this.viewport = el('div', 'lv-viewport');
    this.viewport.tabIndex = 0;
    this.viewport.setAttribute('role', 'region');
    this.viewport.setAttribute('aria-label', 'Job output');
    this.spacer = el('div', 'lv-spacer');
    this.linesEl = el('div', 'lv-lines');
    this.viewport.append(this.spacer, this.linesEl);
    this._on(this.viewport, 'scroll', () => this._onScroll());
    this._on(this.viewport, 'keydown', (e) => this._onKey(e));
    // Past MAX_SCROLL_PX a pixel is more than a row: scroll by rows, not pixels.
    const wheel = (e) => {
      if (!this._geometry().scaled || e.ctrlKey) return;
      e.preventDefault();
      const rows = e.deltaMode === 1 ? e.deltaY : e.deltaMode === 2 ? e.deltaY * 30 : e.deltaY / LINE_HEIGHT;
      this._scrollRows(rows);
    };
    this.viewport.addEventListener('wheel', wheel, { passive: false });
    this.listeners.push([this.viewport, 'wheel', wheel]);
    c.append(bar, this.viewport);
    if (typeof ResizeObserver !== 'undefined') {
      this.resizeObserver = new ResizeObserver(() => this._render());
      this.resizeObserver.observe(this.viewport);
    }
    this._setFollow(true, false);
  }

  _setState(s) {
    if (this.container.dataset.state !== s) this.container.dataset.state = s;
    this._info();
  }

  _info() {
    if (!this.info) return;
    const mb = (this.end / (1024 * 1024)).toFixed(this.end < 10 * 1024 * 1024 ? 2 : 1);
    const status = this.status ? ` · ${this.status}` : '';
    const pruned = this.prunedAt ? ' · output pruned' : '';
    this.info.textContent = `${this.lineCount.toLocaleString('en')} lines · ${mb} MiB${status}${pruned}`;
  }

  _later(fn, ms) {
    if (this.destroyed) return;
    const t = setTimeout(() => { this.timers.delete(t); if (!this.destroyed) fn(); }, ms);
    this.timers.add(t);
  }

  // ---- fetching ----

  async _json(path) {
    const r = await fetch(`${this.api}${path}`, { credentials: 'same-origin', signal: this.abort.signal });
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return r.json();
  }

  /// Bytes [offset, offset + limit) of the combined output:
  /// { offset, data: Uint8Array, segs: [[stream, length]...], total, lastSeq }.
  async _range(offset, limit) {
    const url = `${this.api}/output?offset=${offset}&limit=${Math.max(1, Math.min(limit, RANGE))}`;
    const r = await fetch(url, { credentials: 'same-origin', signal: this.abort.signal });
    if (!r.ok) throw new Error(`output range: HTTP ${r.status}`);
    const buf = new Uint8Array(await r.arrayBuffer());
    const total = Number(r.headers.get('X-Output-Total') || 0);
    const lastSeq = Number(r.headers.get('X-Output-Last-Seq') ?? -1);
    const segs = [];
    let payload = 0;
    for (let p = 0; p + 5 <= buf.length;) {
      const len = ((buf[p + 1] << 24) >>> 0) + (buf[p + 2] << 16) + (buf[p + 3] << 8) + buf[p + 4];
      segs.push([buf[p], len, p + 5]);
      payload += len;
      p += 5 + len;
    }
    const data = new Uint8Array(payload);
    let at = 0;
    for (const s of segs) {
      data.set(buf.subarray(s[2], s[2] + s[1]), at);
      at += s[1];
    }
    return { offset, data, segs: segs.map((s) => [s[0], s[1]]), total, lastSeq };
  }

  async _start() {
    try {
      const job = await this._json('');
      this.status = job.status;
      this.finished = job.status !== 'queued' && job.status !== 'running';
      this.prunedAt = job.output_pruned_at || null;
      await this._pump();
      if (this.destroyed) return;
      // Retention deleted the output: say so instead of showing an empty log.
      if (this.prunedAt && this.lineCount === 0) {
        const notice = el('p', 'lv-notice', `This job's output was deleted by retention at ${this.prunedAt}.`);
        notice.setAttribute('role', 'status');
        this.container.insertBefore(notice, this.viewport);
      }
      if (!this.finished) {
        this._setState('live');
        this._openStream(this.haveSeq);
      }
      this._maybeDone();
    } catch (e) {
      if (!this.destroyed) this._error(e);
    }
  }

  _error(e) {
    this.info.textContent = `Cannot read the log: ${e.message}`;
    this.info.classList.add('lv-error');
  }

  _maybeDone() {
    if (this.finished && !this.pumping && this.end >= this.total && this.wantSeq <= this.haveSeq) {
      this._closeStream();
      this._setState('done');
    }
  }

  /// Read and index everything stored after what is indexed (one pump at a time).
  async _pump() {
    if (this.pumping) { this.pumpAgain = true; return; }
    this.pumping = true;
    try {
      do {
        this.pumpAgain = false;
        for (;;) {
          const r = await this._range(this.end, RANGE);
          if (this.destroyed) return;
          this.total = r.total;
          this.haveSeq = Math.max(this.haveSeq, r.lastSeq);
          if (r.data.length === 0) break;
          this._feed(r);
          this._keepTail(r);
          this._afterGrowth();
          if (this.end >= r.total) break;
        }
      } while (this.pumpAgain && !this.destroyed);
    } catch (e) {
      if (!this.destroyed && e.name !== 'AbortError') this._error(e);
    } finally {
      this.pumping = false;
    }
    if (this.destroyed) return;
    if (this.wantSeq > this.haveSeq) {
      if (this.finished && ++this.retries > RETRIES) this.wantSeq = this.haveSeq;
      else this._later(() => this._pump(), RETRY_MS);
    }
    this._maybeDone();
  }

  /// Index the bytes of range read `r` (which starts at this.end).
  _feed(r) {
    if (this.open) this._uncache(this.starts.n - 1); // the last line may grow
    let pos = r.offset;
    let at = 0;
    const b = r.data;
    for (const [stream, len] of r.segs) {
      let j = at;
      const stop = at + len;
      while (j < stop) {
        if (!this.open || this.openStream !== stream || this.openLen >= SOFT_LINE) this._newLine(pos + (j - at), stream);
        let k = j;
        while (k < stop && b[k] !== 10) k++;
        const found = k < stop;
        const lineStop = found ? k + 1 : stop;
        const room = SOFT_LINE - this.openLen;
        if (lineStop - j > room) {
          let cut = j + room;
          while (cut > j && (b[cut] & 0xc0) === 0x80) cut--; // keep characters whole
          if (cut === j) cut = j + room;
          this.openLen += cut - j;
          j = cut;
          this.open = false;
          continue;
        }
        this.openLen += lineStop - j;
        j = lineStop;
        if (found) this.open = false;
      }
      pos += len;
      at = stop;
    }
    this.end = pos;
  }

  _newLine(start, stream) {
    const line = this.starts.n;
    this.starts.push(start);
    this.streams.push(stream);
    this.open = true;
    this.openStream = stream;
    this.openLen = 0;
    if (this.rows && this.show[stream]) this.rows.push(line);
  }

  /// Where line `i` ends (exclusive).
  _lineEnd(i) { return i + 1 < this.starts.n ? this.starts.a[i + 1] : this.end; }

  /// Keep decoded the last lines that range read `r` holds whole (the tail, for following).
  _keepTail(r) {
    const n = this.starts.n;
    for (let i = Math.max(0, n - TAIL_KEEP); i < n; i++) {
      if (this.starts.a[i] >= r.offset) this._cacheFrom(i, r);
    }
  }

  /// Cache line `i` from range read `r` if `r` holds all of it.
  _cacheFrom(i, r) {
    const s = this.starts.a[i];
    const e = this._lineEnd(i);
    if (s < r.offset || e > r.offset + r.data.length || this.cache.has(i)) return;
    const bytes = r.data.subarray(s - r.offset, e - r.offset);
    const entry = { runs: parseLine(this.decoder().decode(bytes)), bytes: e - s };
    this.cache.set(i, entry);
    this.cacheBytes += entry.bytes + 64;
    this._evict();
  }

  decoder() {
    if (!this._decoder) this._decoder = new TextDecoder('utf-8');
    return this._decoder;
  }

  _uncache(i) {
    const entry = this.cache.get(i);
    if (entry) {
      this.cache.delete(i);
      this.cacheBytes -= entry.bytes + 64;
    }
  }

  _evict() {
    if (this.cacheBytes <= CACHE_BYTES) return;
    const [first, last] = this._visibleLines();
    for (const [i, entry] of this.cache) {
      if (this.cacheBytes <= CACHE_BYTES * 0.75) break;
      if (i >= first && i <= last) continue;
      this.cache.delete(i);
      this.cacheBytes -= entry.bytes + 64;
    }
  }

  /// Fetch the text of the lines a render could not draw.
  async _fetchText() {
    if (this.fetchingText || !this.textWanted) return;
    const [first, last] = this.textWanted;
    this.textWanted = null;
    // The first and last uncached lines among the wanted rows.
    const wanted = [];
    for (let row = first; row <= last; row++) {
      const line = this._lineOfRow(row);
      if (line !== undefined && !this.cache.has(line)) wanted.push(line);
    }
    if (!wanted.length) return;
    const a = wanted[0];
    let b = wanted[wanted.length - 1];
    const start = this.starts.a[a];
    while (b > a && this._lineEnd(b) - start > RANGE) b--;
    const end = this._lineEnd(b);
    this.fetchingText = true;
    try {
      const r = await this._range(start, end - start);
      if (this.destroyed) return;
      for (let i = a; i <= b && i < this.starts.n; i++) this._cacheFrom(i, r);
      if (!this.cache.has(a)) {
        // Nothing new came (a line still being written?): try again in a moment.
        this._later(() => this._render(), RETRY_MS);
        return;
      }
    } catch (e) {
      if (!this.destroyed && e.name !== 'AbortError') this._error(e);
      return;
    } finally {
      this.fetchingText = false;
    }
    this._render();
  }

  // ---- the stream ----

  _openStream(after) {
    if (this.destroyed || this.finished) return;
    this._closeStream();
    const es = new EventSource(`${this.api}/stream?after=${Math.max(-1, after)}`);
    this.source = es;
    const seen = (e) => {
      const id = Number(e.lastEventId);
      if (Number.isFinite(id) && id > this.lastEventId) this.lastEventId = id;
      return id;
    };
    es.addEventListener('output', (e) => {
      const id = seen(e);
      if (Number.isFinite(id) && id > this.wantSeq) this.wantSeq = id;
      this._schedulePump();
    });
    es.addEventListener('status', (e) => {
      seen(e);
      this._onJob(e.data);
    });
    es.addEventListener('complete', (e) => {
      const id = seen(e);
      if (Number.isFinite(id) && id > this.wantSeq) this.wantSeq = id;
      this._onJob(e.data);
      this.finished = true;
      this._closeStream();
      this._pump();
    });
    es.onerror = () => {
      // EventSource reconnects by itself (with Last-Event-ID); when it gives up, so do
      // we, after a pause, from the last id seen. Either way the bytes come from ranges.
      if (es.readyState === EventSource.CLOSED && this.source === es) {
        this.source = null;
        this._later(() => this._openStream(this.lastEventId), 1000);
      }
      this._schedulePump();
    };
  }

  _onJob(data) {
    try {
      const job = JSON.parse(data);
      if (job && job.status) {
        this.status = job.status;
        this._info();
      }
    } catch (_) { /* not JSON: ignore */ }
  }

  _closeStream() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  /// For tests: drop the stream as a network failure would, and resume from the last id.
  _dropStream() {
    this._closeStream();
    this._openStream(this.lastEventId);
  }

  _schedulePump() {
    if (this.pumpTimer) return;
    this.pumpTimer = true;
    this._later(() => { this.pumpTimer = false; this._pump(); }, 50);
  }

  // ---- rows, filters, scrolling ----

  get rowCount() { return this.rows ? this.rows.n : this.starts.n; }

  _lineOfRow(row) {
    if (row < 0 || row >= this.rowCount) return undefined;
    return this.rows ? this.rows.a[row] : row;
  }

  /// The row of line `line`, or of the first shown line after it.
  _rowOfLine(line) { return this.rows ? lowerBound(this.rows.a, this.rows.n, line) : line; }

  _setFilter(stream, on) {
    this.show[stream] = on;
    if (this.show[0] && this.show[1]) {
      this.rows = null;
    } else {
      this.rows = new Grow(Uint32Array);
      const s = this.streams.a;
      for (let i = 0; i < this.starts.n; i++) if (this.show[s[i]]) this.rows.push(i);
    }
    this.dom.clear();
    this.linesEl.replaceChildren();
    if (this.follow) this._toBottom();
    this._render();
  }

  _geometry() {
    const rows = this.rowCount;
    const viewH = this.viewport.clientHeight || 1;
    const rowsH = rows * LINE_HEIGHT;
    const scaled = rowsH > MAX_SCROLL_PX;
    const spacerH = scaled ? MAX_SCROLL_PX : rowsH;
    const maxScroll = Math.max(0, spacerH - viewH);
    const rowsMax = Math.max(0, rows - viewH / LINE_HEIGHT);
    return { rows, viewH, scaled, spacerH, maxScroll, rowsMax };
  }

  _topRow(g, scrollTop) {
    if (!g.scaled) return scrollTop / LINE_HEIGHT;
    return g.maxScroll > 0 ? (Math.min(scrollTop, g.maxScroll) / g.maxScroll) * g.rowsMax : 0;
  }

  _scrollFor(g, row) {
    if (!g.scaled) return row * LINE_HEIGHT;
    return g.rowsMax > 0 ? (row / g.rowsMax) * g.maxScroll : 0;
  }

  _visibleLines() {
    const g = this._geometry();
    const top = this._topRow(g, this.viewport.scrollTop);
    const first = this._lineOfRow(Math.max(0, Math.floor(top) - MARGIN)) ?? 0;
    const last = this._lineOfRow(Math.min(g.rows - 1, Math.ceil(top + g.viewH / LINE_HEIGHT) + MARGIN)) ?? 0;
    return [first, last];
  }

  _onKey(e) {
    if (e.target !== this.viewport || e.altKey || e.ctrlKey || e.metaKey) return;
    const page = Math.max(1, Math.floor(this._geometry().viewH / LINE_HEIGHT) - 1);
    const moves = { ArrowDown: 1, ArrowUp: -1, PageDown: page, PageUp: -page, ' ': e.shiftKey ? -page : page };
    if (e.key === '/') {
      e.preventDefault();
      this.searchInput.focus();
    } else if (e.key in moves) {
      e.preventDefault();
      this._scrollRows(moves[e.key]);
    } else if (e.key === 'Home') {
      e.preventDefault();
      this._setFollow(false, false);
      this.viewport.scrollTop = 0;
    } else if (e.key === 'End') {
      e.preventDefault();
      this._setFollow(true, true);
    }
  }

  /// Scroll by `delta` rows (fractions allowed).
  _scrollRows(delta) {
    const g = this._geometry();
    const top = Math.max(0, Math.min(g.rowsMax, this._topRow(g, this.viewport.scrollTop) + delta));
    this.viewport.scrollTop = Math.min(g.maxScroll, this._scrollFor(g, top));
  }

  _setFollow(on, jump) {
    this.follow = on;
    this.followBtn.setAttribute('aria-pressed', on ? 'true' : 'false');
    this.followBtn.classList.toggle('on', on);
    if (on && jump) this._toBottom();
  }

  _toBottom() {
    const g = this._geometry();
    if (this.spacer.style.height !== `${g.spacerH}px`) this.spacer.style.height = `${g.spacerH}px`;
    this.viewport.scrollTop = g.maxScroll;
    this._render();
  }

  _onScroll() {
    const v = this.viewport;
    const atBottom = v.scrollTop + v.clientHeight >= v.scrollHeight - LINE_HEIGHT;
    if (atBottom !== this.follow) this._setFollow(atBottom, false);
    this._scheduleRender();
  }

  _afterGrowth() {
    this._info();
    if (this.search.needle && !this.search.running) this._runSearch(this.search.gen);
    this._scheduleRender();
  }

  _scheduleRender() {
    if (this.raf || this.destroyed) return;
    this.raf = requestAnimationFrame(() => { this.raf = 0; this._render(); });
  }

  /// Draw the visible rows (and a margin) and nothing else.
  _render() {
    if (this.destroyed) return;
    const g = this._geometry();
    const h = `${g.spacerH}px`;
    if (this.spacer.style.height !== h) this.spacer.style.height = h;
    if (this.follow && Math.abs(this.viewport.scrollTop - g.maxScroll) > 1) this.viewport.scrollTop = g.maxScroll;
    const scrollTop = this.viewport.scrollTop;
    const top = this._topRow(g, scrollTop);
    const firstRow = Math.max(0, Math.floor(top) - MARGIN);
    const lastRow = Math.min(g.rows - 1, Math.ceil(top + g.viewH / LINE_HEIGHT) + MARGIN);
    const y = scrollTop - (top - firstRow) * LINE_HEIGHT;
    this.linesEl.style.transform = `translateY(${Math.max(0, y)}px)`;

    const els = [];
    const keep = new Map();
    let missing = null;
    const hits = this.search.hits;
    const curLine = this.search.cur >= 0 ? hits.a[this.search.cur] : -1;
    for (let row = firstRow; row <= lastRow; row++) {
      const line = this._lineOfRow(row);
      const entry = this.cache.get(line);
      if (!entry) {
        if (!missing) missing = [row, row]; else missing[1] = row;
      }
      const hit = this.search.needle && entry && this._isHit(line) ? (line === curLine ? 2 : 1) : 0;
      let e = this.dom.get(line);
      if (!e || e._entry !== entry || e._hit !== hit || e._gen !== this.search.gen) {
        e = this._lineElement(line, entry, hit);
      }
      keep.set(line, e);
      els.push(e);
    }
    this.dom = keep;
    const children = this.linesEl.children;
    let same = children.length === els.length;
    for (let i = 0; same && i < els.length; i++) same = children[i] === els[i];
    if (!same) this.linesEl.replaceChildren(...els);
    if (missing) {
      this.textWanted = missing;
      this._fetchText();
    }
  }

  _isHit(line) {
    const h = this.search.hits;
    const k = lowerBound(h.a, h.n, line);
    return k < h.n && h.a[k] === line;
  }

  _lineElement(line, entry, hit) {
    const stream = this.streams.a[line] === 1 ? 'stderr' : 'stdout';
    const e = el('div', `log-line ${stream}`);
    e.dataset.line = String(line + 1);
    e._entry = entry;
    e._hit = hit;
    e._gen = this.search.gen;
    if (!entry) {
      e.classList.add('pending');
      return e;
    }
    if (hit === 2) e.classList.add('current-line');
    const runs = entry.runs;
    if (!hit) {
      for (const run of runs) e.append(runElement('span', run));
      return e;
    }
    // Mark every occurrence of the query in the drawn text.
    const text = runs.map((r) => r.t).join('');
    const q = this.search.query;
    const folded = text.toLowerCase();
    const fold = folded.length === text.length;
    const hay = fold ? folded : text;
    const needle = fold ? q.toLowerCase() : q;
    const marks = [];
    for (let i = hay.indexOf(needle); needle && i >= 0; i = hay.indexOf(needle, i + needle.length)) marks.push([i, i + needle.length]);
    let pos = 0;
    let m = 0;
    const cls = hit === 2 ? 'hit current' : 'hit';
    for (const run of runs) {
      const runEnd = pos + run.t.length;
      let at = pos;
      while (at < runEnd) {
        while (m < marks.length && marks[m][1] <= at) m++;
        const mk = marks[m];
        if (mk && mk[0] <= at) {
          const to = Math.min(runEnd, mk[1]);
          e.append(runElement('mark', { t: run.t.slice(at - pos, to - pos), st: run.st }, cls));
          at = to;
        } else {
          const to = mk ? Math.min(runEnd, mk[0]) : runEnd;
          e.append(runElement('span', { t: run.t.slice(at - pos, to - pos), st: run.st }));
          at = to;
        }
      }
      pos = runEnd;
    }
    return e;
  }

  // ---- search ----

  _startSearch(query) {
    const s = this.search;
    s.gen++;
    s.query = query;
    s.needle = query ? new TextEncoder().encode(query).map(lower) : null;
    s.hits = new Grow(Uint32Array);
    s.scanned = 0;
    s.cur = -1;
    s.running = false;
    s.pendingStep = 0;
    this._hitInfo();
    this._render();
    if (s.needle) this._runSearch(s.gen);
  }

  /// Scan the lines not yet searched, by line-aligned ranges; only the hits' line numbers
  /// are kept.
  async _runSearch(gen) {
    const s = this.search;
    if (s.running || !s.needle) return;
    s.running = true;
    this._hitInfo();
    try {
      for (;;) {
        // The open last line is searched once it is complete (or the job ended).
        const upto = this.open && !this.finished ? this.starts.n - 1 : this.starts.n;
        if (s.scanned >= upto) break;
        const a = s.scanned;
        const start = this.starts.a[a];
        let b = a;
        while (b + 1 < upto && this._lineEnd(b + 1) - start <= RANGE) b++;
        const r = await this._range(start, this._lineEnd(b) - start);
        if (this.destroyed || gen !== s.gen) return;
        let i = a;
        for (; i <= b; i++) {
          const ls = this.starts.a[i] - r.offset;
          const le = this._lineEnd(i) - r.offset;
          if (le > r.data.length) break;
          if (hasBytes(r.data, ls, le, s.needle)) s.hits.push(i);
        }
        if (i === a) break; // nothing readable yet
        s.scanned = i;
        this._hitInfo();
        if (s.pendingStep && s.hits.n) this._searchStep(s.pendingStep);
        this._render();
      }
    } catch (e) {
      if (!this.destroyed && e.name !== 'AbortError') this._error(e);
    } finally {
      if (gen === s.gen) s.running = false;
    }
    if (gen === s.gen) {
      this._hitInfo();
      const upto = this.open && !this.finished ? this.starts.n - 1 : this.starts.n;
      if (s.scanned < upto) this._runSearch(gen);
    }
  }

  _hitInfo() {
    const s = this.search;
    if (!s.needle) { this.hitInfo.textContent = ''; return; }
    const more = s.running ? '…' : '';
    const cur = s.cur >= 0 ? `${s.cur + 1}/` : '';
    this.hitInfo.textContent = `${cur}${s.hits.n}${more} lines`;
  }

  /// Move to the next (1) or previous (-1) hit shown; a new query starts a search first.
  _searchStep(dir) {
    const q = this.searchInput.value;
    const s = this.search;
    if (q !== s.query) {
      this._startSearch(q);
      s.pendingStep = dir;
      return;
    }
    if (!s.needle) return;
    if (!s.hits.n) { s.pendingStep = dir; return; }
    s.pendingStep = 0;
    const n = s.hits.n;
    let k = s.cur;
    if (k < 0) {
      // From the view: the first hit below its top (or above, backwards).
      const g = this._geometry();
      const topLine = this._lineOfRow(Math.floor(this._topRow(g, this.viewport.scrollTop))) ?? 0;
      k = lowerBound(s.hits.a, n, topLine);
      if (dir < 0) k -= 1;
    } else {
      k += dir;
    }
    // Skip hits on lines the filter hides.
    for (let tries = 0; tries < n; tries++) {
      k = ((k % n) + n) % n;
      if (this.show[this.streams.a[s.hits.a[k]]]) break;
      k += dir;
    }
    s.cur = ((k % n) + n) % n;
    this._hitInfo();
    this._jumpTo(s.hits.a[s.cur]);
  }

  /// Scroll line `line` to the middle of the view.
  _jumpTo(line) {
    this._setFollow(false, false);
    const g = this._geometry();
    const row = this._rowOfLine(line);
    const rowsInView = g.viewH / LINE_HEIGHT;
    const target = Math.max(0, row - Math.floor(rowsInView / 2));
    this.viewport.scrollTop = Math.min(g.maxScroll, this._scrollFor(g, target));
    this._render();
  }
}
