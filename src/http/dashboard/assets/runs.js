// Runs: the list, and a run's page (the host grid, live from the run's stream; the grouped
// summary; cancel; rerun failed).
import { get, post, query } from './api.js';
import { h, mount, field, showError, status, when, short, table, button, needs } from './ui.js';

const STATUSES = ['queued', 'running', 'completed', 'failed', 'canceled'];
const FINISHED = ['completed', 'failed', 'canceled'];
const what = (r) => (r.kind === 'script' ? `script (${r.shell || 'sh'})` : [r.command, r.args].filter(Boolean).join(' '));
const counts = (c) => Object.entries(c).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k.replace('_', ' ')}`).join(', ');

export async function list(main, { query: q, go }) {
  const st = q.get('status') || '';
  const cursor = q.get('cursor') || '';
  const sel = h('select', { name: 'status' }, h('option', { value: '' }, 'any'), STATUSES.map((s) => h('option', { value: s }, s)));
  sel.value = st;
  const form = h('form', { class: 'filters' }, field('Status', sel), h('button', { type: 'submit', class: 'primary' }, 'Filter'));
  form.addEventListener('submit', (ev) => { ev.preventDefault(); go('runs', { status: sel.value }); });
  const box = h('div');
  mount(main, h('h1', {}, 'Runs'), form, box);
  let page;
  try { page = await get(`runs${query({ status: st, cursor, limit: 25 })}`); } catch (e) { showError(box, e, form); return; }
  const rows = page.runs.map((r) => h('tr', {},
    h('td', { class: 'mono' }, h('a', { href: `#/runs/${r.id}` }, short(r.id))),
    h('td', {}, status(r.status)),
    h('td', { class: 'mono truncate', title: what(r) }, what(r)),
    h('td', {}, `${r.hosts.length} hosts`, h('br'), h('span', { class: 'muted' }, counts(r.counts))),
    h('td', { class: 'hide-narrow' }, r.created_by),
    h('td', {}, when(r.created_at))));
  mount(box, table(['Run', 'Status', 'What', 'Hosts', 'By', 'Created'], rows),
    h('div', { class: 'pager' },
      cursor ? h('a', { href: `#/runs${query({ status: st })}` }, 'First page') : null,
      page.next_cursor ? h('a', { href: `#/runs${query({ status: st, cursor: page.next_cursor })}` }, 'Next page') : null));
}

function grid(run) {
  return h('div', { class: 'grid', id: 'host-grid', role: 'list' }, run.hosts.map((host) => h('div', {
    class: `cell ${host.status}`, role: 'listitem', dataset: { server: host.server_name, status: host.status },
  },
  h('div', { class: 'name' }, host.job_id ? h('a', { href: `#/jobs/${host.job_id}` }, host.server_name) : host.server_name),
  status(host.status),
  host.exit_code !== null && host.exit_code !== undefined ? h('span', { class: 'muted' }, ` exit ${host.exit_code}`) : null,
  host.error ? h('div', { class: 'muted truncate', title: host.error }, host.error) : null)));
}

function summary(groups) {
  return table(['Servers', 'Status', 'Exit', 'Output'], groups.map((g) => h('tr', {},
    h('td', {}, g.servers.join(', ')),
    h('td', {}, status(g.status)),
    h('td', {}, g.exit_code ?? '—'),
    h('td', {}, h('pre', { class: 'sample' }, g.sample || ''), h('span', { class: 'muted' }, `${g.output_bytes} bytes`)))));
}

export async function page(main, { args: [id], go }) {
  let run = await get(`runs/${encodeURIComponent(id)}`);
  const box = h('div');
  const head = h('div', { class: 'card' });
  const actions = h('div', { class: 'actions' });
  const hosts = h('div');
  const sum = h('div', { id: 'summary' });
  const render = () => {
    main.dataset.runStatus = run.status;
    mount(head, h('dl', { class: 'fields' },
      h('dt', {}, 'Status'), h('dd', {}, status(run.status)),
      h('dt', {}, 'What'), h('dd', { class: 'mono' }, what(run)),
      h('dt', {}, 'Targets'), h('dd', {}, run.targets.selector ? `selector ${run.targets.selector}` : (run.targets.servers || []).join(', ')),
      h('dt', {}, 'Hosts'), h('dd', {}, counts(run.counts) || '—'),
      h('dt', {}, 'Created'), h('dd', {}, `${when(run.created_at)} by ${run.created_by}`),
      h('dt', {}, 'Finished'), h('dd', {}, when(run.finished_at)),
      run.rerun_of ? [h('dt', {}, 'Rerun of'), h('dd', {}, h('a', { href: `#/runs/${run.rerun_of}` }, run.rerun_of))] : null,
      h('dt', {}, 'Jobs'), h('dd', {}, h('a', { href: `#/jobs?run_id=${run.id}` }, 'the jobs of this run'))));
    mount(hosts, grid(run));
    const done = FINISHED.includes(run.status);
    mount(actions,
      done ? null : needs('operator', button('Cancel run', async () => {
        if (!window.confirm('Cancel this run? Running hosts are stopped, the rest skipped.')) return;
        try { run = await post(`runs/${run.id}/cancel`); render(); } catch (e) { showError(box, e); }
      }, 'danger')),
      done && run.status !== 'completed' ? needs('operator', button('Rerun failed', async () => {
        try { const r = await post(`runs/${run.id}/rerun`, { only: 'failed' }); go(`runs/${r.id}`); } catch (e) { showError(box, e); }
      })) : null);
  };
  const loadSummary = async () => {
    try { mount(sum, summary(await get(`runs/${run.id}/summary`))); } catch (e) { showError(sum, e); }
  };
  render();
  mount(main, h('h1', {}, `Run ${short(run.id)}`), box, actions, head, h('h2', {}, 'Hosts'), hosts,
    h('h2', {}, 'Summary (hosts grouped by output and exit code)'), sum);
  loadSummary();

  // Live: every host event of the run's stream refreshes the run (debounced).
  let source = null;
  let pending = null;
  const refresh = () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try { run = await get(`runs/${run.id}`); render(); } catch (e) { showError(box, e); }
    }, 150);
  };
  if (!FINISHED.includes(run.status)) {
    source = new EventSource(`/api/v1/runs/${run.id}/stream`);
    for (const type of ['status', 'host_complete']) source.addEventListener(type, refresh);
    source.addEventListener('complete', (ev) => {
      source.close();
      try { run = JSON.parse(ev.data); render(); } catch { refresh(); }
      loadSummary();
    });
  }
  return () => { if (source) source.close(); if (pending) clearTimeout(pending); };
}
