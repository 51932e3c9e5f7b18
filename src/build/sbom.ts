/**
 * An SPDX 2.3 JSON software bill of materials: the image and every Debian package in it, with
 * versions, .deb checksums and purls. Timestamps come from SOURCE_DATE_EPOCH, so it is reproducible.
 */
import type { ImageManifest } from '../image/manifest.js';
import { stableGuid } from './ids.js';

export function spdxDocument(m: ImageManifest, imageSha256: string): object {
  const spdxId = (name: string) => `SPDXRef-Package-deb-${name.replace(/[^A-Za-z0-9.-]/g, '-')}`;
  const created = new Date(m.sourceDateEpoch * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
  const packages = [...m.packages].sort((a, b) => (a.name < b.name ? -1 : 1));
  return {
    spdxVersion: 'SPDX-2.3',
    dataLicense: 'CC0-1.0',
    SPDXID: 'SPDXRef-DOCUMENT',
    name: `${m.name}-${m.version}-${m.board}`,
    documentNamespace: `urn:uuid:${stableGuid('spdx', m.name, m.version, m.board, imageSha256).toLowerCase()}`,
    creationInfo: { created, creators: ['Tool: edgekit'] },
    packages: [
      {
        name: m.name,
        SPDXID: 'SPDXRef-Image',
        versionInfo: m.version,
        downloadLocation: 'NOASSERTION',
        filesAnalyzed: false,
        primaryPackagePurpose: 'OPERATING-SYSTEM',
        checksums: [{ algorithm: 'SHA256', checksumValue: imageSha256 }],
        comment: `disk image for board ${m.board} (${m.arch})`,
      },
      ...packages.map((p) => ({
        name: p.name,
        SPDXID: spdxId(p.name),
        versionInfo: p.version,
        supplier: 'Organization: Debian',
        downloadLocation: 'NOASSERTION',
        filesAnalyzed: false,
        checksums: [{ algorithm: 'SHA256', checksumValue: p.sha256 }],
        ...(p.source ? { sourceInfo: `built from Debian source package ${p.source}` } : {}),
        externalRefs: [
          {
            referenceCategory: 'PACKAGE-MANAGER',
            referenceType: 'purl',
            referenceLocator: `pkg:deb/debian/${encodeURIComponent(p.name)}@${encodeURIComponent(p.version)}?arch=${p.arch}`,
          },
        ],
      })),
    ],
    relationships: [
      { spdxElementId: 'SPDXRef-DOCUMENT', relationshipType: 'DESCRIBES', relatedSpdxElement: 'SPDXRef-Image' },
      ...packages.map((p) => ({ spdxElementId: 'SPDXRef-Image', relationshipType: 'CONTAINS', relatedSpdxElement: spdxId(p.name) })),
    ],
  };
}
