// Schedules: the list with their next fires in the browser's local time, pause and resume.
import { get, post, query } from './api.js';
import { h, mount, showError, when, table, button, needs } from './ui.js';

export async function list(main) {
  const box = h('div');
  const body = h('div');
  mount(main, h('h1', {}, 'Schedules'), box, body);
  const render = async () => {
    const { schedules } = await get('schedules');
    const rows = await Promise.all(schedules.map(async (s) => {
      let next = [];
      if (!s.paused) {
        try {
          next = (await get(`schedules/preview${query({ cron: s.cron, timezone: s.timezone, count: 3 })}`)).fires;
        } catch { next = []; }
      }
      const toggle = needs('admin', button(s.paused ? 'Resume' : 'Pause', async () => {
        try { await post(`schedules/${s.id}/${s.paused ? 'resume' : 'pause'}`); await render(); } catch (e) { showError(box, e); }
      }));
      return h('tr', { dataset: { schedule: s.name, paused: String(s.paused) } },
        h('td', {}, s.name),
        h('td', {}, h('a', { href: `#/templates/${encodeURIComponent(s.template)}` }, s.template)),
        h('td', { class: 'mono' }, s.cron, h('br'), h('span', { class: 'muted' }, s.timezone)),
        h('td', {}, s.paused ? h('span', { class: 'muted' }, 'paused')
          : h('ul', { class: 'fires' }, (next.length ? next.map((f) => f.at || f.utc || f.fire_at) : [s.next_fire_at]).map((t) => h('li', {}, when(t))))),
        h('td', { class: 'hide-narrow' }, when(s.last_fired_at)),
        h('td', { class: 'hide-narrow' }, s.overlap),
        h('td', {}, toggle));
    }));
    mount(body, h('p', { class: 'muted' }, `Times in your local time (${Intl.DateTimeFormat().resolvedOptions().timeZone}).`),
      table(['Name', 'Template', 'Cron', 'Next fires', 'Last fired', 'Overlap', ''], rows));
  };
  try { await render(); } catch (e) { showError(box, e); }
}
