/** The admin API from the operator's side: what `edgekit fleet` calls. */
import { EdgekitError } from '../util/errors.js';

export class FleetAdminClient {
  constructor(private readonly server: string, private readonly token: string) {}

  get(path: string): Promise<unknown> {
    return this.call('GET', path);
  }

  post(path: string, body: unknown = {}): Promise<unknown> {
    return this.call('POST', path, body);
  }

  put(path: string, body: unknown): Promise<unknown> {
    return this.call('PUT', path, body);
  }

  private async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const url = new URL(path.replace(/^\//, ''), this.server.replace(/\/*$/, '/'));
    let res: Response;
    try {
      res = await fetch(url, {
        method,
        headers: { authorization: `Bearer ${this.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (err) {
      throw new EdgekitError(`${url.href}: cannot reach the fleet server (${(err as Error).cause ?? (err as Error).message})`);
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new EdgekitError(`${method} ${url.href}: HTTP ${res.status}, not JSON`);
    }
    if (!res.ok) throw new EdgekitError(`${method} ${url.pathname}: HTTP ${res.status}: ${(parsed as { error?: string }).error ?? text}`);
    return parsed;
  }
}
