/**
 * Trust for archive signatures: the Debian archive public keys vendored in keys/debian-archive/
 * (exported from the debian-archive-keyring package; the removed-keys ring is left out), or keys a
 * caller passes (a private mirror, a test archive).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as openpgp from 'openpgp';
import { EdgekitError } from '../util/errors.js';

/** keys/ at the package root: two levels above src/packages/ and dist/packages/ alike. */
export const debianKeysDir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'keys', 'debian-archive');

export async function readPublicKeys(armoredOrBinary: string | Uint8Array): Promise<openpgp.PublicKey[]> {
  const keys =
    typeof armoredOrBinary === 'string'
      ? await openpgp.readKeys({ armoredKeys: armoredOrBinary })
      : await openpgp.readKeys({ binaryKeys: armoredOrBinary });
  return keys.map((k) => (k.isPrivate() ? k.toPublic() : k)) as openpgp.PublicKey[];
}

/** Every key in a directory of .asc (armored) and .pgp/.gpg (binary) files, in file-name order. */
export async function loadKeyDir(dir: string): Promise<openpgp.PublicKey[]> {
  const keys: openpgp.PublicKey[] = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (name.endsWith('.asc')) keys.push(...(await readPublicKeys(readFileSync(path, 'utf8'))));
    else if (name.endsWith('.pgp') || name.endsWith('.gpg')) keys.push(...(await readPublicKeys(readFileSync(path))));
  }
  return keys;
}

let debianKeys: Promise<openpgp.PublicKey[]> | undefined;
export function debianArchiveKeys(): Promise<openpgp.PublicKey[]> {
  debianKeys ??= loadKeyDir(debianKeysDir);
  return debianKeys;
}

/**
 * Verifies a clearsigned InRelease and returns the signed text. At least one signature must come
 * from a trusted key and verify; signatures by keys we do not hold (archives sign with several) are
 * ignored. `where` names the file in error messages.
 */
export async function verifyClearsigned(text: string, keys: openpgp.PublicKey[], where: string): Promise<string> {
  let message: openpgp.CleartextMessage;
  try {
    message = await openpgp.readCleartextMessage({ cleartextMessage: text });
  } catch {
    throw new EdgekitError(`${where}: not an OpenPGP clearsigned file`);
  }
  const result = await openpgp.verify({ message, verificationKeys: keys, expectSigned: false });
  let good = false;
  let bad = false;
  for (const sig of result.signatures) {
    try {
      await sig.verified;
      good = true;
    } catch (err) {
      // A signature by a key we hold that does not verify means the text was altered.
      if (!/Could not find signing key/i.test((err as Error).message)) bad = true;
    }
  }
  if (bad || !good) {
    const why = bad ? 'bad signature' : 'no signature by a trusted key';
    throw new EdgekitError(`${where}: ${why}`);
  }
  return result.data as string;
}
