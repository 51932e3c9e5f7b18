/** The Debian archive client: sources, signed indices, resolution, .deb cache and extraction. */
export { openArchive, openDebFolder, type ArchiveOptions, type DebianArch } from './archive.js';
export { defaultMirror, defaultSecurityMirror, securityMirrorFor, hostAptSources, type AptSource } from './sources.js';
export { unpackDeb, readDebControl, addDebToTree, sha256File, type UnpackedDeb, type DebEntry } from './deb.js';
export { moduleIndex, moduleClosure, moduleBytes, moduleName, type ModuleIndex, type ModuleInfo } from './modules.js';
export { compareVersions, satisfies } from './version.js';
export { parseStanzas, parseDepends, type Stanza } from './control.js';
export { debianArchiveKeys, loadKeyDir, readPublicKeys, verifyClearsigned } from './keys.js';
export type { Archive, LockFile, PackageRecord, ResolvedPackage, ResolveOptions } from './types.js';
