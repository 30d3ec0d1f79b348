// Submit: a command or a script, on one server (a job) or on the servers a label selector
// matches (a run).
import { get, post } from './api.js';
import { h, mount, field, showError, clearErrors, parsePairs } from './ui.js';

export async function page(main, { go }) {
  const { servers } = await get('servers');
  const kindCommand = h('input', { type: 'radio', name: 'kind', value: 'command', checked: true, id: 'kind-command' });
  const kindScript = h('input', { type: 'radio', name: 'kind', value: 'script', id: 'kind-script' });
  const command = h('input', { name: 'command', id: 'command', size: 50, autocomplete: 'off', spellcheck: 'false' });
  const args = h('input', { name: 'args', id: 'args', size: 30, autocomplete: 'off' });
  const script = h('textarea', { name: 'script', id: 'script', spellcheck: 'false', placeholder: '#!/bin/sh\necho hello' });
  const shell = h('input', { name: 'shell', id: 'shell', placeholder: '/bin/sh' });
  const onServer = h('input', { type: 'radio', name: 'target', value: 'server', checked: true, id: 'target-server' });
  const onSelector = h('input', { type: 'radio', name: 'target', value: 'selector', id: 'target-selector' });
  const server = h('select', { name: 'server_id', id: 'server' }, servers.map((s) => h('option', { value: s.id }, s.name)));
  const selector = h('input', { name: 'targets.selector', id: 'selector', placeholder: 'role=web,env=prod' });
  const timeout = h('input', { type: 'number', name: 'timeout', id: 'timeout', min: 1, max: 604800, placeholder: 'default' });
  const cwd = h('input', { name: 'cwd', id: 'cwd' });
  const env = h('input', { name: 'env', id: 'env', placeholder: 'KEY=value, OTHER=x' });
  const commandPart = h('div', { class: 'form-grid' }, field('Command', command), field('Arguments', args));
  const scriptArgs = h('input', { name: 'args', id: 'script-args', size: 30, autocomplete: 'off' });
  const scriptPart = h('div', {}, field('Script', script), h('div', { class: 'form-grid' }, field('Shell', shell), field('Arguments', scriptArgs)));
  const serverPart = field('Server', server);
  const selectorPart = field('Label selector', selector);
  const box = h('div');
  const form = h('form', { id: 'submit-form', class: 'card' },
    h('fieldset', {}, h('legend', {}, 'What'),
      h('label', { class: 'inline', for: kindCommand.id }, kindCommand, 'Command'),
      h('label', { class: 'inline', for: kindScript.id }, kindScript, 'Script'),
      commandPart, scriptPart),
    h('fieldset', {}, h('legend', {}, 'Where'),
      h('label', { class: 'inline', for: onServer.id }, onServer, 'One server (a job)'),
      h('label', { class: 'inline', for: onSelector.id }, onSelector, 'Servers matching labels (a run)'),
      h('div', { class: 'form-grid' }, serverPart, selectorPart)),
    h('div', { class: 'form-grid' }, field('Timeout (s)', timeout), field('Working directory', cwd), field('Environment', env)),
    box,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', id: 'submit-button' }, 'Submit')));
  const sync = () => {
    commandPart.hidden = !kindCommand.checked;
    scriptPart.hidden = kindCommand.checked;
    command.required = kindCommand.checked;
    script.required = !kindCommand.checked;
    serverPart.hidden = !onServer.checked;
    selectorPart.hidden = onServer.checked;
    selector.required = onSelector.checked;
  };
  for (const r of [kindCommand, kindScript, onServer, onSelector]) r.addEventListener('change', sync);
  sync();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    mount(box);
    if (!form.reportValidity()) return;
    const body = {};
    if (kindCommand.checked) {
      body.command = command.value;
      if (args.value) body.args = args.value;
    } else {
      body.script = script.value;
      if (shell.value) body.shell = shell.value;
      if (scriptArgs.value) body.args = scriptArgs.value;
    }
    if (timeout.value) body.timeout = Number(timeout.value);
    if (cwd.value) body.cwd = cwd.value;
    try {
      if (env.value.trim()) body.env = parsePairs(env.value, 'environment');
    } catch (e) { showError(box, e); return; }
    try {
      if (onServer.checked) {
        if (!server.value) throw new Error('Register a server first (Servers → New server).');
        body.server_id = server.value;
        const job = await post(kindCommand.checked ? 'jobs' : 'jobs/script', body);
        go(`jobs/${job.id}`);
      } else {
        body.targets = { selector: selector.value.trim() };
        const run = await post('runs', body);
        go(`runs/${run.id}`);
      }
    } catch (e) { showError(box, e, form); }
  });
  mount(main, h('h1', {}, 'Submit'), form);
  command.focus();
}
