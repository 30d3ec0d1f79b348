// DOM helpers: elements are built, never parsed from strings (no innerHTML), so nothing the
// API returns can become markup.

/** An element: h('a', {href: '#/x', class: 'y'}, 'text', child, …). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace the children of `el`. */
export function mount(el, ...children) { el.replaceChildren(); append(el, children); }

let ids = 0;
/** A labelled input: field('Name', h('input', {...})) → <label>Name <input id=…></label>. */
export function field(text, input, hint) {
  if (!input.id) input.id = `f${++ids}`;
  const error = h('span', { class: 'field-error', id: `${input.id}-err`, 'aria-live': 'polite' });
  input.setAttribute('aria-describedby', error.id);
  return h('label', { for: input.id }, text, input, hint ? h('span', { class: 'muted' }, hint) : null, error);
}

/** Show an API error in `box` (and, for a 422, beside the input `form` names after the field). */
export function showError(box, err, form) {
  mount(box, h('div', { class: 'error', role: 'alert' }, err.message || String(err)));
  if (form && err.field) {
    const input = form.querySelector(`[name="${CSS.escape(err.field)}"]`);
    if (input) {
      const slot = document.getElementById(`${input.id}-err`);
      if (slot) slot.textContent = err.message;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
    }
  }
}

/** Clear the field errors of a form. */
export function clearErrors(form) {
  form.querySelectorAll('.field-error').forEach((e) => { e.textContent = ''; });
  form.querySelectorAll('[aria-invalid]').forEach((e) => e.removeAttribute('aria-invalid'));
}

export const status = (s) => h('span', { class: `status ${s}`, dataset: { status: s } }, s.replace('_', ' '));

/** A time of the API (RFC 3339) in the browser's local time. */
export function when(t) {
  if (!t) return '—';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? t : d.toLocaleString();
}

export const short = (id) => (id ? id.slice(0, 8) : '—');

/** A table in a scrolling wrapper. */
export function table(headers, rows) {
  return h('div', { class: 'table-wrap' },
    h('table', {},
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: headers.length, class: 'muted' }, 'Nothing here.')))));
}

export const TERMINAL = ['completed', 'failed', 'canceled', 'timed_out', 'skipped'];

/** The labels {k: v} as chips. */
export const labels = (obj) => h('span', { class: 'labels' }, Object.entries(obj || {}).map(([k, v]) => h('span', {}, `${k}=${v}`)));

/** "k=v, k2=v2" → {k: v, k2: v2}; throws on a malformed entry. */
export function parsePairs(text, what) {
  const out = {};
  for (const part of text.split(/[,\n]/).map((s) => s.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    if (i <= 0) throw new Error(`${what}: "${part}" is not KEY=VALUE`);
    out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

/** A button that runs `action` (async), disabled while it runs. */
/**
 * Mark `el` as an action that role `role` and those above it may take: the page hides it
 * from the roles below (the API refuses them anyway). Returns `el`.
 */
export function needs(role, el) {
  if (el) el.dataset.needs = role;
  return el;
}

export function button(text, action, cls) {
  const b = h('button', { type: 'button', class: cls });
  b.textContent = text;
  b.addEventListener('click', async () => {
    b.disabled = true;
    try { await action(); } finally { b.disabled = false; }
  });
  return b;
}
