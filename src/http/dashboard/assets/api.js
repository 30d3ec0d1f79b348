// The API client of the dashboard: JSON in and out, the session cookie sent by the browser,
// the CSRF token (kept in memory only) sent on every change.
export const API = '/api/v1';

let csrfToken = null;
let onUnauthorized = null;

/** Remember the session's CSRF token (from GET /session); never stored elsewhere. */
export function setCsrf(token) { csrfToken = token || null; }
/** Called when the API answers 401 (the session ended). */
export function setOnUnauthorized(fn) { onUnauthorized = fn; }

/** An error answer of the API: its status, message, code and field. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.field = body && body.field;
  }
}

/** One request: `path` is under /api/v1 unless it starts with '/'. */
export async function api(method, path, body) {
  const url = path.startsWith('/') ? path : `${API}/${path}`;
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  let response;
  try {
    response = await fetch(url, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, { error: `the service does not answer (${e.message})`, code: 'network' });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = { error: text.slice(0, 300) }; }
  }
  if (!response.ok) {
    if (response.status === 401 && onUnauthorized && !url.endsWith('/session')) onUnauthorized();
    throw new ApiError(response.status, data || {});
  }
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body === undefined ? {} : body);
export const put = (path, body) => api('PUT', path, body);
export const del = (path) => api('DELETE', path);

/** A query string of the non-empty values of `params` (with a leading '?', or ''). */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}
