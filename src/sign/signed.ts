/**
 * Signed JSON documents: `{ signed, signatures: [{ keyid, sig }] }` (the envelope TUF uses), the
 * signature made over a canonical encoding of `signed` (keys sorted, no whitespace), so any JSON
 * reformatting in transit does not break verification.
 */
import { sign, verify, type KeyObject } from 'node:crypto';
import { keyIdOf, publicKeyOf } from './keys.js';

export interface Signature {
  keyid: string;
  sig: string; // base64
}
export interface SignedDocument<T> {
  signed: T;
  signatures: Signature[];
}

export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    if (typeof value === 'number' && !Number.isSafeInteger(value)) throw new Error(`cannot sign non-integer number ${value}`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

export function signDocument<T>(signed: T, privateKey: KeyObject): SignedDocument<T> {
  const sig = sign(null, Buffer.from(canonicalJson(signed)), privateKey).toString('base64');
  return { signed, signatures: [{ keyid: keyIdOf(publicKeyOf(privateKey)), sig }] };
}

export type SignatureStatus = { ok: true; keyid: string } | { ok: false; reason: string };

/** Checks that one of the signatures is a valid signature by `publicKey`. */
export function verifyDocument(doc: SignedDocument<unknown>, publicKey: KeyObject): SignatureStatus {
  const keyid = keyIdOf(publicKey);
  const mine = doc.signatures?.filter((s) => s.keyid === keyid) ?? [];
  if (mine.length === 0) {
    const ids = (doc.signatures ?? []).map((s) => s.keyid.slice(0, 16)).join(', ') || 'none';
    return { ok: false, reason: `not signed by key ${keyid.slice(0, 16)} (signed by: ${ids})` };
  }
  const data = Buffer.from(canonicalJson(doc.signed));
  for (const s of mine) {
    if (verify(null, data, publicKey, Buffer.from(s.sig, 'base64'))) return { ok: true, keyid };
  }
  return { ok: false, reason: `bad signature by key ${keyid.slice(0, 16)}: the manifest was changed after signing` };
}
