/**
 * The device side of the fleet protocol: handshake with the device's ed25519 key, check-in and
 * reports, re-authenticating once when the server no longer honours the token. node:http only (no
 * fetch: undici's WebAssembly parser costs the device agent ~30 MiB), so it fits the device bundle.
 */
import { sign, createPublicKey, type KeyObject } from 'node:crypto';
import { Agent, request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import {
  authMessage, DEVICE_PATHS, rotateKeyMessage, type AuthResponse, type CheckInRequest, type CheckInResponse, type HelloResponse, type ReportRequest, type ReportResponse,
  type RotateKeyRequest,
} from './messages.js';

export class FleetProtocolError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

/** The server knows this device but an operator has not accepted it yet: ask again later. */
export class DevicePendingError extends FleetProtocolError {
  constructor(deviceId: string) {
    super(403, `device ${deviceId} is waiting for acceptance`);
  }
}

/** A token this close to its expiry is renewed before use rather than risk a 401 mid-download. */
const RENEW_BEFORE_MS = 60_000;

export interface FleetDeviceClientOptions {
  /** Server base URL, e.g. http://fleet.example:8080 */
  server: string;
  deviceId: string;
  privateKey: KeyObject;
  provisioningToken?: string;
  /** Shared keep-alive agent (many simulated devices in one process share one). */
  agent?: Agent;
  timeoutMs?: number;
}

export class FleetDeviceClient {
  private token: string | null = null;
  private tokenExpires = 0;
  private privateKey: KeyObject;
  private publicKeyPem: string;

  constructor(private readonly o: FleetDeviceClientOptions) {
    this.privateKey = o.privateKey;
    this.publicKeyPem = publicPem(o.privateKey);
  }

  /** Handshake: 'accepted' (a token is held) or 'pending' (an operator must accept this device first). */
  async authenticate(): Promise<'accepted' | 'pending'> {
    const { nonce } = (await this.post(DEVICE_PATHS.hello, { deviceId: this.o.deviceId }, false)) as HelloResponse;
    const signature = sign(null, authMessage(this.o.deviceId, nonce), this.privateKey).toString('base64');
    const r = (await this.post(DEVICE_PATHS.auth, {
      deviceId: this.o.deviceId, publicKey: this.publicKeyPem, nonce, signature,
      ...(this.o.provisioningToken ? { provisioningToken: this.o.provisioningToken } : {}),
    }, false)) as AuthResponse;
    this.token = r.status === 'accepted' ? r.token : null;
    // Kept on the monotonic clock: a device clock set by NTP after boot must not confuse it.
    this.tokenExpires = r.status === 'accepted' ? performance.now() + r.expiresIn * 1000 : 0;
    return r.status;
  }

  /**
   * Replaces the device's key on the server by `newKey` (both keys sign; see messages.ts), then
   * uses the new key from here on. Safe to call again with the same new key when the answer was
   * lost: the server answers 'rotated' once the new key is in place. Throws FleetProtocolError.
   */
  async rotateKey(newKey: KeyObject): Promise<void> {
    const { nonce } = (await this.post(DEVICE_PATHS.hello, { deviceId: this.o.deviceId }, false)) as HelloResponse;
    const newPublicKey = publicPem(newKey);
    const message = rotateKeyMessage(this.o.deviceId, nonce, newPublicKey);
    const req: RotateKeyRequest = {
      deviceId: this.o.deviceId, nonce, publicKey: this.publicKeyPem, signature: sign(null, message, this.privateKey).toString('base64'),
      newPublicKey, newSignature: sign(null, message, newKey).toString('base64'),
    };
    await this.post(DEVICE_PATHS.rotateKey, req, false);
    this.privateKey = newKey;
    this.publicKeyPem = newPublicKey;
    // Tokens issued for the old key are refused from now on.
    this.token = null;
  }

  /**
   * A device token good for at least another minute, authenticating when needed: for requests
   * this client does not make itself (the release repository's files on the same server).
   */
  async bearer(): Promise<string> {
    if (!this.token || performance.now() > this.tokenExpires - RENEW_BEFORE_MS) {
      this.token = null;
      if ((await this.authenticate()) === 'pending') throw new DevicePendingError(this.o.deviceId);
    }
    return this.token!;
  }

  /** Forget the token (the server answered 401 to it): the next request authenticates again. */
  dropToken(): void {
    this.token = null;
  }

  checkIn(req: CheckInRequest): Promise<CheckInResponse> {
    return this.authed(DEVICE_PATHS.checkIn, req) as Promise<CheckInResponse>;
  }

  report(req: ReportRequest): Promise<ReportResponse> {
    return this.authed(DEVICE_PATHS.reports, req) as Promise<ReportResponse>;
  }

  private async authed(path: string, body: unknown): Promise<unknown> {
    await this.bearer();
    try {
      return await this.post(path, body, true);
    } catch (err) {
      if (!(err instanceof FleetProtocolError) || err.status !== 401) throw err;
      this.token = null;
      await this.bearer();
      return this.post(path, body, true);
    }
  }

  private post(path: string, body: unknown, withToken: boolean): Promise<unknown> {
    const url = new URL(path, this.o.server.replace(/\/*$/, '/'));
    const data = Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = { 'content-type': 'application/json', 'content-length': data.length };
    if (withToken && this.token) headers.authorization = `Bearer ${this.token}`;
    const request = url.protocol === 'https:' ? httpsRequest : httpRequest;
    return new Promise((resolve, reject) => {
      const req = request(url, { method: 'POST', headers, agent: this.o.agent, timeout: this.o.timeoutMs ?? 30_000 }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown;
          try {
            parsed = JSON.parse(text);
          } catch {
            return reject(new FleetProtocolError(res.statusCode ?? 0, `${url.href}: answer is not JSON (HTTP ${res.statusCode})`));
          }
          const status = res.statusCode ?? 0;
          if (status >= 400) return reject(new FleetProtocolError(status, `${url.href}: HTTP ${status}: ${(parsed as { error?: string }).error ?? text}`));
          resolve(parsed);
        });
      });
      req.on('timeout', () => req.destroy(new Error(`${url.href}: no answer in time`)));
      req.on('error', reject);
      req.end(data);
    });
  }
}

function publicPem(privateKey: KeyObject): string {
  return createPublicKey(privateKey).export({ type: 'spki', format: 'pem' }) as string;
}
