// The log viewer's development page: /assets/logview-dev.html?job=ID mounts it on job ID.
import { LogViewer } from './logview.js';

const job = new URLSearchParams(location.search).get('job');
const container = document.getElementById('log');
if (job) window.viewer = new LogViewer(container, { jobId: job, apiBase: '/api/v1' });
else container.textContent = 'Add ?job=ID to the address.';
