/**
 * The agent's reports: one line on the console for each step, and the same as JSON POSTed to the
 * server's report sink (`${server}/reports`). A report that cannot be delivered is logged and
 * dropped: reports must never hold up or fail an update.
 */
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';

export type ReportState = 'checking' | 'downloading' | 'installing' | 'rebooting' | 'committed' | 'rolled-back' | 'failed';

export interface Report {
  state: ReportState;
  /** The release concerned. */
  version?: string;
  /** What the device runs now. */
  running: string;
  slot: 'a' | 'b';
  name: string;
  board: string;
  /** downloading: bytes the update will download. */
  bytes?: number;
  /** downloading: 'full' or 'delta'. */
  method?: 'full' | 'delta';
  reason?: string;
}

export type Reporter = (r: Report) => Promise<void>;

/** The console line of a report: `edgekit-agent: <state> <version> [key=value ...]`. */
export function reportLine(r: Report): string {
  const extra = [
    r.bytes !== undefined ? `bytes=${r.bytes}` : '',
    r.method ? `method=${r.method}` : '',
    `slot=${r.slot}`,
    `running=${r.running}`,
  ].filter(Boolean);
  return `edgekit-agent: ${r.state}${r.version ? ` ${r.version}` : ''} ${extra.join(' ')}${r.reason ? `: ${r.reason}` : ''}`;
}

export interface ReporterOptions {
  /** Report sink base URL; none: console only. */
  server?: string;
  log: (line: string) => void;
  timeoutMs?: number;
}

export function createReporter(o: ReporterOptions): Reporter {
  return async (r) => {
    o.log(reportLine(r));
    if (!o.server) return;
    const url = new URL('reports', o.server.replace(/\/*$/, '/'));
    await postJson(url, r, o.timeoutMs ?? 10_000).catch((err: Error) => o.log(`edgekit-agent: report not delivered to ${url.href}: ${err.message}`));
  };
}

function postJson(url: URL, body: unknown, timeoutMs: number): Promise<void> {
  const data = Buffer.from(JSON.stringify(body));
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const req = request(url, { method: 'POST', headers: { 'content-type': 'application/json', 'content-length': data.length }, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on('end', () => ((res.statusCode ?? 0) < 300 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs / 1000} s`)));
    req.on('error', (err) => reject(new Error((err as NodeJS.ErrnoException).code ?? err.message)));
    req.end(data);
  });
}
