// The dashboard's shell: the session (login/logout), the header's health, and the hash router
// (#/jobs?status=failed: the view's filters live in the URL, so it can be bookmarked).
import { api, get, setCsrf, setOnUnauthorized, ApiError } from './api.js';
import { h, mount, field, showError } from './ui.js';
import * as jobs from './jobs.js';
import * as runs from './runs.js';
import * as servers from './servers.js';
import * as templates from './templates.js';
import * as schedules from './schedules.js';
import * as submit from './submit.js';

const routes = [
  [/^jobs$/, jobs.list],
  [/^jobs\/([^/]+)$/, jobs.page],
  [/^runs$/, runs.list],
  [/^runs\/([^/]+)$/, runs.page],
  [/^servers$/, servers.list],
  [/^servers\/new$/, servers.edit],
  [/^servers\/([^/]+)$/, servers.edit],
  [/^templates$/, templates.list],
  [/^templates\/([^/]+)$/, templates.page],
  [/^schedules$/, schedules.list],
  [/^submit$/, submit.page],
];

const main = document.getElementById('main');
let cleanup = null;
let session = null;

/** The current route: its path (without '#/') and query. */
function location() {
  const raw = window.location.hash.replace(/^#\/?/, '');
  const [path, q] = raw.split('?');
  return { path: path || 'jobs', query: new URLSearchParams(q || '') };
}

/** Go to a route (`jobs/ID`, with an optional query object). */
export function go(path, params) {
  const q = params ? new URLSearchParams(Object.entries(params).filter(([, v]) => v !== '' && v != null)).toString() : '';
  window.location.hash = `#/${path}${q ? `?${q}` : ''}`;
}

async function route() {
  if (cleanup) { try { cleanup(); } catch (e) { console.error(e); } cleanup = null; }
  if (!session || !session.authenticated) return;
  const { path, query } = location();
  for (const a of document.querySelectorAll('#nav a')) {
    const current = path.startsWith(a.getAttribute('href').slice(2));
    a.classList.toggle('current', current);
    if (current) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  const found = routes.find(([re]) => re.test(path));
  mount(main);
  main.dataset.page = path.split('/')[0];
  if (!found) {
    mount(main, h('h1', {}, 'Not found'), h('p', {}, 'No page here. ', h('a', { href: '#/jobs' }, 'Jobs')));
    return;
  }
  const [re, render] = found;
  const args = path.match(re).slice(1).map(decodeURIComponent);
  try {
    const result = await render(main, { args, query, go });
    if (typeof result === 'function') cleanup = result;
    // Keyboard users land on the new page, unless the page focused a field of its own.
    if (!document.activeElement || document.activeElement === document.body || !document.activeElement.isConnected) {
      main.focus({ preventScroll: true });
    }
  } catch (e) {
    const box = h('div');
    main.append(box);
    showError(box, e);
  }
}

async function loadSession() {
  session = await get('/session');
  setCsrf(session.csrf_token);
  const who = document.getElementById('who');
  const logout = document.getElementById('logout');
  who.textContent = session.authenticated && session.tokens_required
    ? [session.name, session.role, session.scope].filter(Boolean).join(' · ') : '';
  // Actions the role may not take are hidden (ui.js `needs`).
  document.body.dataset.role = session.role || '';
  logout.hidden = !(session.authenticated && session.tokens_required);
  return session;
}

function loginPage() {
  document.getElementById('nav').hidden = true;
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'current-password', required: true });
  const box = h('div');
  const form = h('form', { class: 'card login', id: 'login' },
    h('h1', {}, 'Log in'),
    h('p', { class: 'muted' }, 'This service needs an API token. The dashboard keeps a session cookie, never the token.'),
    field('API token', input), box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Log in')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    mount(box);
    try {
      await api('POST', '/session', { token: input.value });
      input.value = '';
      await start();
    } catch (e) {
      const err = e.status === 401 ? new ApiError(401, { error: 'That token is not valid.' }) : e;
      showError(box, err);
      input.select();
    }
  });
  mount(main, form);
  main.dataset.page = 'login';
  input.focus();
}

async function start() {
  try {
    await loadSession();
  } catch (e) {
    const box = h('div');
    mount(main, box);
    showError(box, e);
    return;
  }
  if (!session.authenticated) { loginPage(); return; }
  document.getElementById('nav').hidden = false;
  await route();
}

async function health() {
  const el = document.getElementById('health');
  try {
    const r = await fetch('/health', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    const body = await r.json();
    el.textContent = body.status === 'ok'
      ? `ok · ${body.database_backend} · queue ${body.queue}${body.queue_connected ? '' : ' (disconnected)'}`
      : `unavailable: ${body.database}`;
    el.className = `health ${body.status === 'ok' && body.queue_connected ? 'ok' : 'bad'}`;
    el.title = `version ${body.version}`;
  } catch {
    el.textContent = 'service unreachable';
    el.className = 'health bad';
  }
}

document.getElementById('logout').addEventListener('click', async () => {
  try { await api('DELETE', '/session'); } catch (e) { console.error(e); }
  setCsrf(null);
  if (cleanup) { cleanup(); cleanup = null; }
  await start();
});

setOnUnauthorized(() => { session = null; setCsrf(null); start(); });
window.addEventListener('hashchange', route);
health();
setInterval(health, 5000);
start();
