// STUB of the log viewer (helper "logview" owns the real one; at merge, take theirs).
// Follows the job's stream and appends every line; the interface is the shared contract.
export class LogViewer {
  constructor(container, { jobId, apiBase = '/api/v1' }) {
    this.container = container;
    this.lineCount = 0;
    this.renderedLineCount = 0;
    this.partial = { stdout: null, stderr: null };
    container.dataset.state = 'loading';
    this.list = document.createElement('div');
    this.list.className = 'log-lines';
    container.append(this.list);
    this.source = new EventSource(`${apiBase}/jobs/${encodeURIComponent(jobId)}/stream`);
    this.source.addEventListener('status', () => { if (container.dataset.state === 'loading') container.dataset.state = 'live'; });
    this.source.addEventListener('output', (ev) => this.add(JSON.parse(ev.data)));
    this.source.addEventListener('complete', () => { this.source.close(); container.dataset.state = 'done'; });
  }

  add({ stream, output }) {
    const parts = output.split('\n');
    parts.forEach((text, i) => {
      const last = i === parts.length - 1;
      if (last && text === '') { this.partial[stream] = null; return; }
      let el = this.partial[stream];
      if (el) { el.textContent += text; } else {
        el = document.createElement('div');
        el.className = `log-line ${stream}`;
        el.textContent = text;
        this.list.append(el);
        this.lineCount += 1;
        this.renderedLineCount += 1;
      }
      this.partial[stream] = last ? el : null;
    });
  }

  destroy() { this.source.close(); }
}
