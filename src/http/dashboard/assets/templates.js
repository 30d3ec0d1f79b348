// Templates: the list, and a template's page with a launch form generated from its typed
// parameters (checked in the browser as the API checks them; the API's 422 shown beside
// the field it names).
import { get, post } from './api.js';
import { h, mount, field, showError, clearErrors, when, table } from './ui.js';

const what = (t) => (t.kind === 'script' ? `script (${t.shell || 'sh'})` : [t.command, t.args].filter(Boolean).join(' '));
const targets = (t) => (t.targets.selector ? `selector ${t.targets.selector}` : (t.targets.servers || []).join(', '));

export async function list(main) {
  const { templates } = await get('templates');
  const rows = templates.map((t) => h('tr', {},
    h('td', {}, h('a', { href: `#/templates/${encodeURIComponent(t.name)}` }, t.name)),
    h('td', {}, t.description || ''),
    h('td', { class: 'mono truncate', title: what(t) }, what(t)),
    h('td', {}, targets(t)),
    h('td', {}, t.parameters.map((p) => p.name).join(', ') || '—'),
    h('td', { class: 'hide-narrow' }, h('a', { href: `#/jobs?template=${encodeURIComponent(t.name)}` }, 'jobs'))));
  mount(main, h('h1', {}, 'Templates'), table(['Name', 'Description', 'Runs', 'Targets', 'Parameters', ''], rows));
}

/** The input of one parameter, named `parameters.NAME` as the API's 422 names it. */
function paramInput(p) {
  const name = `parameters.${p.name}`;
  const required = p.required && (p.default === null || p.default === undefined);
  let el;
  switch (p.type) {
    case 'integer':
      el = h('input', { type: 'number', step: 1, name, required, value: p.default ?? '' });
      break;
    case 'boolean':
      el = h('input', { type: 'checkbox', name, checked: p.default === true });
      break;
    case 'choice':
      el = h('select', { name, required },
        required ? h('option', { value: '' }, '(choose)') : h('option', { value: '' }, '(default)'),
        (p.choices || []).map((c) => h('option', { value: c }, c)));
      if (p.default !== null && p.default !== undefined) el.value = String(p.default);
      break;
    default: {
      el = h('input', { type: p.secret ? 'password' : 'text', name, required, autocomplete: 'off', value: p.secret ? '' : (p.default ?? '') });
      if (p.pattern) {
        try { new RegExp(`^(?:${p.pattern})$`, 'v'); el.setAttribute('pattern', p.pattern); } catch { /* not a JS pattern: the API checks it */ }
        el.title = `must match ${p.pattern}`;
      }
    }
  }
  el.dataset.param = p.name;
  el.dataset.type = p.type;
  return el;
}

function value(el) {
  if (el.dataset.type === 'boolean') return el.checked;
  if (el.value === '') return undefined;
  if (el.dataset.type === 'integer') return Number(el.value);
  return el.value;
}

export async function page(main, { args: [name], go }) {
  const t = await get(`templates/${encodeURIComponent(name)}`);
  const inputs = t.parameters.map(paramInput);
  const selector = h('input', { name: 'targets.selector', placeholder: 'role=web (blank: the template\'s targets)' });
  const box = h('div');
  const form = h('form', { id: 'launch', novalidate: false },
    h('div', { class: 'form-grid' },
      t.parameters.map((p, i) => (p.type === 'boolean'
        ? h('div', {}, h('label', { class: 'inline', for: inputs[i].id || (inputs[i].id = `p-${p.name}`) }, inputs[i], p.name),
          h('span', { class: 'field-error', id: `${inputs[i].id}-err` }), p.description ? h('div', { class: 'muted' }, p.description) : null)
        : field(`${p.name}${p.required ? ' *' : ''}${p.secret ? ' (secret)' : ''}`, inputs[i], p.description))),
      field('Other targets (selector)', selector)),
    box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Launch')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    mount(box);
    if (!form.reportValidity()) return;
    const parameters = {};
    inputs.forEach((el) => { const v = value(el); if (v !== undefined) parameters[el.dataset.param] = v; });
    const body = { parameters };
    if (selector.value.trim()) body.targets = { selector: selector.value.trim() };
    try {
      const run = await post(`templates/${encodeURIComponent(t.name)}/launch`, body);
      go(`runs/${run.id}`);
    } catch (e) { showError(box, e, form); }
  });
  mount(main, h('h1', {}, `Template ${t.name}`),
    h('div', { class: 'card' }, h('dl', { class: 'fields' },
      h('dt', {}, 'Description'), h('dd', {}, t.description || '—'),
      h('dt', {}, 'Runs'), h('dd', { class: 'mono' }, what(t)),
      h('dt', {}, 'Targets'), h('dd', {}, targets(t)),
      h('dt', {}, 'Timeout'), h('dd', {}, `${t.timeout} s`),
      h('dt', {}, 'Updated'), h('dd', {}, when(t.updated_at)))),
    h('h2', { dataset: { needs: 'operator' } }, 'Launch'),
    h('div', { class: 'card', dataset: { needs: 'operator' } }, t.parameters.length ? null : h('p', { class: 'muted' }, 'No parameters.'), form));
}
