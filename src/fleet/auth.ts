/**
 * Credentials: device bearer tokens (HMAC-signed with a per-server secret kept in the store, so a
 * restarted server honours tokens it issued), one-use handshake nonces, and admin/provisioning tokens
 * (random; only their sha256 is stored).
 */
import { createHash, createHmac, createPublicKey, randomBytes, timingSafeEqual, verify } from 'node:crypto';
import { authMessage } from './protocol/messages.js';
import type { Scope } from './store/store.js';

export const DEVICE_TOKEN_SECONDS = 15 * 60;
const NONCE_SECONDS = 60;
const MAX_OUTSTANDING_NONCES = 100_000;

export const SCOPE_RANK: Record<Scope, number> = { read: 0, operator: 1, admin: 2 };

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export function newSecretToken(prefix: string): string {
  return `${prefix}_${randomBytes(24).toString('base64url')}`;
}

export class DeviceTokens {
  private readonly nonces = new Map<string, { deviceId: string; expires: number }>();
  constructor(private readonly secret: Buffer, private readonly now: () => number) {}

  issueNonce(deviceId: string): string {
    const t = this.now();
    if (this.nonces.size >= MAX_OUTSTANDING_NONCES) {
      for (const [n, v] of this.nonces) if (v.expires <= t) this.nonces.delete(n);
      // Still full: drop the oldest rather than grow without bound.
      while (this.nonces.size >= MAX_OUTSTANDING_NONCES) this.nonces.delete(this.nonces.keys().next().value!);
    }
    const nonce = randomBytes(18).toString('base64url');
    this.nonces.set(nonce, { deviceId, expires: t + NONCE_SECONDS * 1000 });
    return nonce;
  }

  /** Consumes the nonce (one use) and checks the device's signature over it. */
  verifyHandshake(deviceId: string, nonce: string, publicKeyPem: string, signatureB64: string): 'ok' | 'bad-nonce' | 'bad-key' | 'bad-signature' {
    const n = this.nonces.get(nonce);
    this.nonces.delete(nonce);
    if (!n || n.deviceId !== deviceId || n.expires <= this.now()) return 'bad-nonce';
    let key;
    try {
      key = createPublicKey(publicKeyPem);
    } catch {
      return 'bad-key';
    }
    if (key.asymmetricKeyType !== 'ed25519') return 'bad-key';
    const sig = Buffer.from(signatureB64, 'base64');
    if (sig.length !== 64) return 'bad-signature';
    return verify(null, authMessage(deviceId, nonce), key, sig) ? 'ok' : 'bad-signature';
  }

  issueToken(deviceId: string): string {
    const expires = Math.floor(this.now() / 1000) + DEVICE_TOKEN_SECONDS;
    const body = `${Buffer.from(deviceId, 'utf8').toString('base64url')}.${expires}`;
    return `dev.${body}.${this.mac(body)}`;
  }

  /** The device id a token was issued to, or null when it is forged, malformed or expired. */
  checkToken(token: string): string | null {
    const m = /^dev\.([A-Za-z0-9_-]+)\.(\d{1,12})\.([A-Za-z0-9_-]+)$/.exec(token);
    if (!m) return null;
    const body = `${m[1]}.${m[2]}`;
    const want = Buffer.from(this.mac(body));
    const got = Buffer.from(m[3]);
    if (want.length !== got.length || !timingSafeEqual(want, got)) return null;
    if (Number(m[2]) * 1000 <= this.now()) return null;
    return Buffer.from(m[1], 'base64url').toString('utf8');
  }

  private mac(body: string): string {
    return createHmac('sha256', this.secret).update(body).digest('base64url');
  }
}
