// The admin API with the token the operator pasted. The token lives in sessionStorage only: it is
// gone when the tab closes, and no other tab or later visit sees it.
const KEY = 'edgekit.fleet.token';

export class ApiError extends Error {
  constructor(status, reason) {
    super(`${status}: ${reason}`);
    this.status = status;
    this.reason = reason;
  }
}

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

export async function api(method, path, body, t = token.get()) {
  const headers = { authorization: `Bearer ${t}` };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  let data = null;
  try {
    data = await res.json();
  } catch {
    throw new ApiError(res.status, 'the server answered something that is not JSON');
  }
  if (!res.ok) throw new ApiError(res.status, data && data.error ? data.error : res.statusText);
  return data;
}

export const get = (path) => api('GET', path);
export const post = (path, body = {}) => api('POST', path, body);

const RANK = { read: 0, operator: 1, admin: 2 };
export const canOperate = (who) => !!who && RANK[who.scope] >= RANK.operator;
