// Servers: the list with labels; create and edit (secrets write-only: never shown, never
// pre-filled, blank means unchanged); the connection test with the host key's fingerprint,
// and accepting a changed host key deliberately.
import { get, post, put, del } from './api.js';
import { h, mount, field, showError, clearErrors, when, table, labels, parsePairs, button, needs } from './ui.js';

export async function list(main) {
  const { servers } = await get('servers');
  const rows = servers.map((s) => h('tr', { dataset: { server: s.name } },
    h('td', {}, h('a', { href: `#/servers/${s.id}` }, s.name)),
    h('td', { class: 'mono' }, `${s.user}@${s.hostname}:${s.port}`),
    h('td', {}, labels(s.labels)),
    h('td', {}, s.is_active ? 'active' : 'inactive'),
    h('td', { class: 'mono hide-narrow' }, s.host_key_fingerprint || '—'),
    h('td', {}, h('a', { href: `#/jobs?server_id=${s.id}` }, 'jobs'))));
  mount(main, h('h1', {}, 'Servers'),
    h('div', { class: 'actions' }, h('a', { href: '#/servers/new', dataset: { needs: 'admin' } }, 'New server')),
    table(['Name', 'Address', 'Labels', 'State', 'Host key', ''], rows));
}

function input(name, value, attrs) {
  return h('input', { name, value: value ?? '', ...attrs });
}

export async function edit(main, { args: [id], go }) {
  const server = id ? await get(`servers/${encodeURIComponent(id)}`) : null;
  const f = {
    name: input('name', server?.name, { required: true, maxlength: 255 }),
    hostname: input('hostname', server?.hostname, { required: true }),
    port: input('port', server?.port ?? 22, { type: 'number', min: 1, max: 65535 }),
    user: input('user', server?.user, { required: true }),
    auth_type: h('select', { name: 'auth_type' }, h('option', { value: 'key' }, 'key'), h('option', { value: 'password' }, 'password')),
    // Secrets: never pre-filled (the API never returns them).
    password: input('password', '', { type: 'password', autocomplete: 'new-password', placeholder: server?.has_password ? '(stored: blank keeps it)' : '' }),
    private_key: h('textarea', { name: 'private_key', autocomplete: 'off', spellcheck: 'false', placeholder: server?.has_private_key ? '(stored: blank keeps it)' : '-----BEGIN OPENSSH PRIVATE KEY-----' }),
    private_key_passphrase: input('private_key_passphrase', '', { type: 'password', autocomplete: 'new-password', placeholder: server?.has_private_key_passphrase ? '(stored: blank keeps it)' : '' }),
    host_key: input('host_key', server?.host_key, { placeholder: 'SHA256:… (blank: trust on first use)' }),
    host_key_check: h('select', { name: 'host_key_check' }, h('option', { value: 'tofu' }, 'trust on first use'), h('option', { value: 'off' }, 'off (accept any key)')),
    max_concurrent_jobs: input('max_concurrent_jobs', server?.max_concurrent_jobs, { type: 'number', min: 1 }),
    labels: input('labels', Object.entries(server?.labels || {}).map(([k, v]) => `${k}=${v}`).join(', '), { placeholder: 'role=web, env=prod' }),
    is_active: h('input', { type: 'checkbox', name: 'is_active', checked: server ? server.is_active : true }),
  };
  f.auth_type.value = server?.auth_type || 'key';
  f.host_key_check.value = server?.host_key_check || 'tofu';
  const box = h('div');
  const form = h('form', { id: 'server-form', autocomplete: 'off' },
    h('div', { class: 'form-grid' },
      field('Name', f.name), field('Host name', f.hostname), field('Port', f.port), field('User', f.user),
      field('Authentication', f.auth_type), field('Password', f.password), field('Key passphrase', f.private_key_passphrase),
      field('Pinned host key', f.host_key), field('Host key check', f.host_key_check),
      field('Max concurrent jobs', f.max_concurrent_jobs), field('Labels', f.labels)),
    field('Private key', f.private_key),
    h('label', { class: 'inline' }, f.is_active, 'Active'),
    box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', dataset: { needs: 'admin' } }, server ? 'Save' : 'Create')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    let body;
    try {
      body = {
        name: f.name.value.trim(), hostname: f.hostname.value.trim(), user: f.user.value.trim(),
        port: Number(f.port.value || 22), auth_type: f.auth_type.value, host_key_check: f.host_key_check.value,
        is_active: f.is_active.checked, labels: parsePairs(f.labels.value, 'labels'),
      };
    } catch (e) { showError(box, e); return; }
    if (f.max_concurrent_jobs.value) body.max_concurrent_jobs = Number(f.max_concurrent_jobs.value);
    const hostKey = f.host_key.value.trim();
    if (hostKey !== (server?.host_key || '')) body.host_key = hostKey;
    // Blank secret: unchanged (left out of the request).
    for (const k of ['password', 'private_key', 'private_key_passphrase']) if (f[k].value) body[k] = f[k].value;
    try {
      const saved = server ? await put(`servers/${server.id}`, body) : await post('servers', body);
      for (const k of ['password', 'private_key', 'private_key_passphrase']) f[k].value = '';
      go(`servers/${saved.id}`);
      if (server) mount(box, h('div', { class: 'notice', role: 'status' }, 'Saved.'));
    } catch (e) { showError(box, e, form); }
  });

  const testBox = h('div', { id: 'test-result' });
  const test = async (accept) => {
    mount(testBox, h('p', { class: 'muted' }, 'Testing…'));
    try {
      const r = await post(`servers/${server.id}/test`, accept ? { accept_host_key: true } : {});
      const rows = [
        ['Result', r.ok ? 'connected, authenticated, ran true' : 'failed'],
        ['Latency', `${r.latency_ms} ms`],
        ['Host key fingerprint', h('span', { class: 'mono' }, r.host_key_fingerprint || '—')],
        ['Error', r.error || '—'],
        ['Pinned now', r.host_key_pinned ? 'yes' : 'no'],
      ];
      const changed = !r.ok && r.error && /host key/i.test(r.error);
      mount(testBox, h('div', { class: r.ok ? 'notice' : 'error', role: 'status' },
        h('dl', { class: 'fields' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))),
      changed ? h('div', { class: 'card' },
        h('p', {}, 'The server presented a different host key than the one pinned. Accept it only if you know the server was re-installed or its key rotated: otherwise someone may be in the middle.'),
        needs('admin', button(`Accept the new host key ${r.host_key_fingerprint || ''}`, async () => {
          if (window.confirm(`Pin the new host key ${r.host_key_fingerprint || ''} for ${server.name}? This is audited.`)) await test(true);
        }, 'danger'))) : null);
    } catch (e) { showError(testBox, e); }
  };

  mount(main, h('h1', {}, server ? `Server ${server.name}` : 'New server'),
    server ? h('p', { class: 'muted' }, `Created ${when(server.created_at)}, updated ${when(server.updated_at)}. Host key: `,
      h('span', { class: 'mono' }, server.host_key_fingerprint || 'none pinned yet')) : null,
    server ? h('div', { class: 'actions' },
      needs('operator', button('Test connection', () => test(false))),
      needs('admin', button('Delete', async () => {
        if (!window.confirm(`Delete server ${server.name}?`)) return;
        try { await del(`servers/${server.id}`); go('servers'); } catch (e) { showError(box, e); }
      }, 'danger'))) : null,
    testBox,
    h('div', { class: 'card' }, form));
}
