/** Signed releases (TUF): the publisher's repository tools and the device's metadata client. */
export { initRepo, rotateRoot, refreshMetadata, describeRepo, type InitRepoOptions, type RotateOptions, type RefreshOptions, type RepoSummary, type RoleKeyCount } from './repo-admin.js';
export { publishRelease, republishRelease, withdrawRelease, listReleases, DEFAULT_CHANNEL, type PublishOptions, type RepublishOptions, type WithdrawOptions, type Release } from './publish.js';
export { createMetadataClient, saveStream, type MetadataClient, type MetadataClientOptions, type UpdateInfo, type TargetInfo } from './client.js';
export { compareVersions, type ReleaseCustom, type SlotFiles, type DeltaRef, type VerityParams } from './release-info.js';
export { readTrustedTime } from './trusted-time.js';
