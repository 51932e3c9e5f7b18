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

export type SignatureCheck = 'ok' | 'bad-key' | 'bad-signature';
export type HandshakeCheck = SignatureCheck | 'bad-nonce';

/** A device token that checked out: whom it was issued to and when (unix ms, to the second). */
export interface TokenHolder {
  deviceId: string;
  issuedAt: number;
}

/** Why a text is not an ed25519 public key (SPKI PEM), or null when it is one. */
export function publicKeyProblem(publicKeyPem: string): string | null {
  try {
    const key = createPublicKey(publicKeyPem);
    return key.asymmetricKeyType === 'ed25519' ? null : `a ${key.asymmetricKeyType} key, devices use ed25519`;
  } catch {
    return 'not a public key (SPKI PEM)';
  }
}

/** A short name for a public key in logs and the audit: sha256 of its SPKI DER, 16 hex digits. */
export function keyFingerprint(publicKeyPem: string): string {
  const der = createPublicKey(publicKeyPem).export({ type: 'spki', format: 'der' });
  return `sha256:${createHash('sha256').update(der).digest('hex').slice(0, 16)}`;
}

/** Checks an ed25519 signature (base64) of `message` by an SPKI PEM public key. */
export function checkSignature(publicKeyPem: string, message: Buffer, signatureB64: string): SignatureCheck {
  let key;
  try {
    key = createPublicKey(publicKeyPem);
  } catch {
    return 'bad-key';
  }
  if (key.asymmetricKeyType !== 'ed25519') return 'bad-key';
  const sig = Buffer.from(signatureB64, 'base64');
  if (sig.length !== 64) return 'bad-signature';
  return verify(null, message, key, sig) ? 'ok' : 'bad-signature';
}

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
   * True when the nonce was issued to this device, is unexpired and was not used before; it is
   * consumed (one use, through `consume`, which answers false for a nonce seen before). Callers
   * consume before checking signatures, so a wrong signature burns the nonce too.
   */
  async useNonce(deviceId: string, nonce: string, consume: (nonce: string, expiresAt: number) => Promise<boolean>): Promise<boolean> {
    const m = /^([A-Za-z0-9_-]{22})\.(\d{1,15})\.([A-Za-z0-9_-]{43})$/.exec(nonce);
    if (!m) return false;
    const expires = Number(m[2]);
    if (!this.macMatches(nonceBody(deviceId, m[1], expires), m[3]) || expires <= this.now()) return false;
    return consume(nonce, expires);
  }

  /** The handshake: a fresh nonce of this device's, signed by the key it presents. */
  async verifyHandshake(
    deviceId: string, nonce: string, publicKeyPem: string, signatureB64: string, consume: (nonce: string, expiresAt: number) => Promise<boolean>,
  ): Promise<HandshakeCheck> {
    if (!(await this.useNonce(deviceId, nonce, consume))) return 'bad-nonce';
    return checkSignature(publicKeyPem, authMessage(deviceId, nonce), signatureB64);
  }

  issueToken(deviceId: string): string {
    const expires = Math.floor(this.now() / 1000) + DEVICE_TOKEN_SECONDS;
    const body = `${Buffer.from(deviceId, 'utf8').toString('base64url')}.${expires}`;
    return `dev.${body}.${this.mac(body)}`;
  }

  /** Whom and when a token was issued to, or null when it is forged, malformed or expired. */
  checkToken(token: string): TokenHolder | null {
    const known = this.verified.get(token);
    if (known) return known.expires <= this.now() ? null : holder(known);
    const m = /^dev\.([A-Za-z0-9_-]+)\.(\d{1,12})\.([A-Za-z0-9_-]+)$/.exec(token);
    if (!m) return null;
    if (!this.macMatches(`${m[1]}.${m[2]}`, m[3])) return null;
    const expires = Number(m[2]) * 1000;
    if (expires <= this.now()) return null;
    const deviceId = Buffer.from(m[1], 'base64url').toString('utf8');
    if (this.verified.size >= MAX_VERIFIED_TOKENS) this.verified.clear();
    const entry = { deviceId, expires };
    this.verified.set(token, entry);
    return holder(entry);
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

function holder(t: { deviceId: string; expires: number }): TokenHolder {
  return { deviceId: t.deviceId, issuedAt: t.expires - DEVICE_TOKEN_SECONDS * 1000 };
}

/** What a nonce's MAC covers. Starts with a context word and holds newlines, so it never equals a token body. */
function nonceBody(deviceId: string, rand: string, expires: number): string {
  return `nonce\n${deviceId}\n${rand}\n${expires}`;
}
