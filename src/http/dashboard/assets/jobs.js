// Jobs: the list (filters and paging in the URL) and a job's page (fields, live status,
// the log viewer, cancel, duplicate with overrides).
import { get, post, query } from './api.js';
import { h, mount, field, showError, clearErrors, status, when, short, table, TERMINAL, button, needs } from './ui.js';

const STATUSES = ['queued', 'running', 'completed', 'failed', 'canceled', 'timed_out'];

/** Server id → name (one request per page). */
export async function serverNames() {
  const { servers } = await get('servers');
  return { servers, name: (id) => (servers.find((s) => s.id === id) || {}).name || short(id) };
}

const what = (j) => (j.kind === 'script' ? `script (${j.shell || 'sh'})` : [j.command, j.args].filter(Boolean).join(' '));

export async function list(main, { query: q, go }) {
  const filters = {
    status: q.get('status') || '', server_id: q.get('server_id') || '',
    template: q.get('template') || '', run_id: q.get('run_id') || '',
  };
  const cursor = q.get('cursor') || '';
  const { servers, name } = await serverNames();
  const statusSel = h('select', { name: 'status' }, h('option', { value: '' }, 'any'),
    STATUSES.map((s) => h('option', { value: s }, s)));
  statusSel.value = filters.status;
  const serverSel = h('select', { name: 'server_id' }, h('option', { value: '' }, 'any'),
    servers.map((s) => h('option', { value: s.id }, s.name)));
  serverSel.value = filters.server_id;
  const template = h('input', { name: 'template', value: filters.template, placeholder: 'name or id', size: 14 });
  const run = h('input', { name: 'run_id', value: filters.run_id, placeholder: 'run id', size: 14 });
  const form = h('form', { class: 'filters', id: 'job-filters' },
    field('Status', statusSel), field('Server', serverSel), field('Template', template), field('Run', run),
    h('button', { type: 'submit', class: 'primary' }, 'Filter'),
    h('a', { href: '#/jobs' }, 'Clear'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    go('jobs', { status: statusSel.value, server_id: serverSel.value, template: template.value.trim(), run_id: run.value.trim() });
  });
  const box = h('div');
  mount(main, h('h1', {}, 'Jobs'), form, box);
  let page;
  try {
    page = await get(`jobs${query({ ...filters, cursor, limit: 25 })}`);
  } catch (e) { showError(box, e, form); return; }
  const rows = page.jobs.map((j) => h('tr', { dataset: { job: j.id } },
    h('td', { class: 'mono' }, h('a', { href: `#/jobs/${j.id}` }, short(j.id))),
    h('td', {}, status(j.status)),
    h('td', { class: 'mono truncate', title: what(j) }, what(j)),
    h('td', {}, h('a', { href: `#/jobs?server_id=${j.server_id}` }, name(j.server_id))),
    h('td', { class: 'hide-narrow' }, j.run_id ? h('a', { href: `#/runs/${j.run_id}` }, short(j.run_id)) : '—'),
    h('td', {}, when(j.created_at))));
  const pager = h('div', { class: 'pager' },
    cursor ? h('a', { href: `#/jobs${query(filters)}` }, 'First page') : null,
    page.next_cursor ? h('a', { href: `#/jobs${query({ ...filters, cursor: page.next_cursor })}`, id: 'next-page' }, 'Next page') : null);
  mount(box, table(['Job', 'Status', 'What', 'Server', 'Run', 'Submitted'], rows), pager);
}

function fields(job, name) {
  const rows = [
    ['Status', status(job.status)],
    ['Kind', job.kind],
    job.kind === 'script' ? ['Script', h('pre', { class: 'sample' }, job.script || '')] : ['Command', h('span', { class: 'mono' }, job.command || '')],
    ['Arguments', job.args || '—'],
    job.kind === 'script' ? ['Shell', job.shell || '—'] : null,
    ['Server', h('a', { href: `#/jobs?server_id=${job.server_id}` }, name(job.server_id))],
    ['Exit code', job.exit_code ?? '—'],
    ['Error', job.error || '—'],
    ['Timeout', `${job.timeout} s`],
    ['Working directory', job.cwd || '—'],
    ['Environment', Object.keys(job.env || {}).length ? Object.entries(job.env).map(([k, v]) => `${k}=${v}`).join(', ') : '—'],
    ['Submitted', when(job.created_at)],
    ['Started', when(job.started_at)],
    ['Finished', when(job.finished_at)],
    ['Run', job.run_id ? h('a', { href: `#/runs/${job.run_id}` }, job.run_id) : '—'],
    ['Duplicated from', job.duplicated_from ? h('a', { href: `#/jobs/${job.duplicated_from}` }, job.duplicated_from) : '—'],
    ['Worker', job.worker || '—'],
    ['Output', `${job.output_bytes} bytes${job.output_truncated ? ' (truncated at the cap)' : ''}`],
  ].filter(Boolean);
  return h('dl', { class: 'fields', id: 'job-fields' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export async function page(main, { args: [id], go }) {
  const { servers, name } = await serverNames();
  let job = await get(`jobs/${encodeURIComponent(id)}`);
  const box = h('div');
  const info = h('div', { class: 'card' });
  const actions = h('div', { class: 'actions' });
  const logEl = h('div', { id: 'log', class: 'card' }, h('p', { class: 'muted' }, 'Loading the log viewer…'));
  const dupServer = h('select', { name: 'server_id' }, h('option', { value: '' }, '(same server)'),
    servers.map((s) => h('option', { value: s.id }, s.name)));
  const dupTimeout = h('input', { type: 'number', name: 'timeout', min: 1, max: 604800, placeholder: `${job.timeout}` });
  const dupForm = h('form', { class: 'row', id: 'duplicate', dataset: { needs: 'operator' } }, field('Server', dupServer), field('Timeout (s)', dupTimeout),
    h('button', { type: 'submit' }, 'Duplicate'));
  dupForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(dupForm);
    const body = {};
    if (dupServer.value) body.server_id = dupServer.value;
    if (dupTimeout.value) body.timeout = Number(dupTimeout.value);
    try {
      const r = await post(`jobs/${job.id}/duplicate`, body);
      go(`jobs/${r.new_job.id}`);
    } catch (e) { showError(box, e, dupForm); }
  });
  const render = () => {
    main.dataset.jobStatus = job.status;
    mount(info, fields(job, name));
    mount(actions, TERMINAL.includes(job.status) ? null : needs('operator', button('Cancel', async () => {
      if (!window.confirm('Cancel this job? Its remote processes are stopped.')) return;
      try { job = (await post(`jobs/${job.id}/cancel`)).job; render(); } catch (e) { showError(box, e); }
    }, 'danger')), h('a', { href: `/api/v1/jobs/${job.id}/logs?format=chunks`, class: 'hide-narrow' }, 'Output as JSON'));
  };
  render();
  mount(main, h('h1', {}, `Job ${short(job.id)}`), box, actions, info, h('h2', {}, 'Output'), logEl,
    h('h2', { dataset: { needs: 'operator' } }, 'Duplicate with overrides'), dupForm);

  let viewer = null;
  let stopped = false;
  import('./logview.js')
    .then(({ LogViewer }) => { if (!stopped) { logEl.replaceChildren(); viewer = new LogViewer(logEl, { jobId: job.id, apiBase: '/api/v1' }); } })
    .catch((e) => mount(logEl, h('div', { class: 'error' }, `The log viewer could not load: ${e.message}`)));

  // The status, live: polled until the job ends (the log viewer holds the stream).
  const timer = setInterval(async () => {
    if (TERMINAL.includes(job.status)) { clearInterval(timer); return; }
    try { job = await get(`jobs/${job.id}`); render(); } catch (e) { showError(box, e); }
  }, 1000);
  return () => { stopped = true; clearInterval(timer); if (viewer) viewer.destroy(); };
}
