/**
 * Credentials: device bearer tokens and handshake nonces (both HMAC-signed with a per-server-fleet
 * secret kept in the store, so any server sharing the database checks what another issued, and a
 * restarted server honours them), and admin/provisioning tokens (random; only their sha256 is stored).
 * A nonce carries its device id and expiry under the MAC, so issuing one writes nothing; the store
 * only remembers nonces presented, to make each one single-use.
 */
import { createHash, createHmac, createPublicKey, randomBytes, timingSafeEqual, verify } from 'node:crypto';
import { authMessage } from './protocol/messages.js';
import type { Scope } from './store/store.js';

export const DEVICE_TOKEN_SECONDS = 15 * 60;
export const NONCE_SECONDS = 60;

export const SCOPE_RANK: Record<Scope, number> = { read: 0, operator: 1, admin: 2 };

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export function newSecretToken(prefix: string): string {
  return `${prefix}_${randomBytes(24).toString('base64url')}`;
}

export type HandshakeCheck = 'ok' | 'bad-nonce' | 'bad-key' | 'bad-signature';

/** Tokens remembered as verified; past this many the memory starts over (a miss only costs an HMAC). */
const MAX_VERIFIED_TOKENS = 100_000;

export class DeviceTokens {
  /**
   * Tokens whose MAC checked out, with their device id and expiry (unix ms). Whether a token is
   * genuine depends only on it and the secret, so the answer can be kept; the expiry is still
   * checked on every use. Saves an HMAC per device request.
   */
  private readonly verified = new Map<string, { deviceId: string; expires: number }>();
  constructor(private readonly secret: Buffer, private readonly now: () => number) {}

  /** A nonce only `deviceId` can use, for NONCE_SECONDS: random part, expiry (unix ms), MAC. */
  issueNonce(deviceId: string): string {
    const rand = randomBytes(16).toString('base64url');
    const expires = this.now() + NONCE_SECONDS * 1000;
    return `${rand}.${expires}.${this.mac(nonceBody(deviceId, rand, expires))}`;
  }

  /**
   * Checks the nonce was issued to this device and is unexpired, consumes it (one use, through
   * `consume`, which answers false for a nonce seen before) and checks the device's signature over it.
   * The nonce is consumed before the signature is checked: a wrong signature burns it too.
   */
  async verifyHandshake(
    deviceId: string, nonce: string, publicKeyPem: string, signatureB64: string, consume: (nonce: string, expiresAt: number) => Promise<boolean>,
  ): Promise<HandshakeCheck> {
    const m = /^([A-Za-z0-9_-]{22})\.(\d{1,15})\.([A-Za-z0-9_-]{43})$/.exec(nonce);
    if (!m) return 'bad-nonce';
    const expires = Number(m[2]);
    if (!this.macMatches(nonceBody(deviceId, m[1], expires), m[3]) || expires <= this.now()) return 'bad-nonce';
    if (!(await consume(nonce, expires))) return 'bad-nonce';
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
    const known = this.verified.get(token);
    if (known) return known.expires <= this.now() ? null : known.deviceId;
    const m = /^dev\.([A-Za-z0-9_-]+)\.(\d{1,12})\.([A-Za-z0-9_-]+)$/.exec(token);
    if (!m) return null;
    if (!this.macMatches(`${m[1]}.${m[2]}`, m[3])) return null;
    const expires = Number(m[2]) * 1000;
    if (expires <= this.now()) return null;
    const deviceId = Buffer.from(m[1], 'base64url').toString('utf8');
    if (this.verified.size >= MAX_VERIFIED_TOKENS) this.verified.clear();
    this.verified.set(token, { deviceId, expires });
    return deviceId;
  }

  private macMatches(body: string, mac: string): boolean {
    const want = Buffer.from(this.mac(body));
    const got = Buffer.from(mac);
    return want.length === got.length && timingSafeEqual(want, got);
  }

  private mac(body: string): string {
    return createHmac('sha256', this.secret).update(body).digest('base64url');
  }
}

/** What a nonce's MAC covers. Starts with a context word and holds newlines, so it never equals a token body. */
function nonceBody(deviceId: string, rand: string, expires: number): string {
  return `nonce\n${deviceId}\n${rand}\n${expires}`;
}
