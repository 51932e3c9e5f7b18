/**
 * YAML + zod with errors a person can act on: every problem is reported as `file:line: field: message`.
 * `yaml` keeps source ranges on its nodes, so a zod issue's path maps back to the line it came from.
 */
import { readFileSync } from 'node:fs';
import { isMap, isNode, isScalar, isSeq, LineCounter, parseDocument, type Document } from 'yaml';
import type { z } from 'zod';
import { EdgekitError } from '../util/errors.js';

export interface SpecProblem {
  file: string;
  line: number;
  field: string;
  message: string;
}

export class SpecError extends EdgekitError {
  constructor(readonly problems: SpecProblem[]) {
    super(problems.map(formatProblem).join('\n'));
    this.name = 'SpecError';
  }
}

export function formatProblem(p: SpecProblem): string {
  return `${p.file}:${p.line}: ${p.field ? p.field + ': ' : ''}${p.message}`;
}

export interface Loaded<T> {
  value: T;
  file: string;
  /** Line of a field, for errors found after schema validation (e.g. an unknown kernel id). */
  lineOf(path: (string | number)[]): number;
}

export function loadYamlFile<S extends z.ZodType>(file: string, schema: S): Loaded<z.infer<S>> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new EdgekitError(`${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return parseYaml(text, file, schema);
}

export function parseYaml<S extends z.ZodType>(text: string, file: string, schema: S): Loaded<z.infer<S>> {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const lineAt = (offset: number) => lineCounter.linePos(offset).line;
  if (doc.errors.length > 0) {
    throw new SpecError(
      doc.errors.map((e) => ({ file, line: lineAt(e.pos[0]), field: '', message: `invalid YAML: ${firstLine(e.message)}` })),
    );
  }
  const lineOf = (path: (string | number)[]) => lineOfPath(doc, path, lineAt);
  const result = schema.safeParse(doc.toJS() ?? {});
  if (!result.success) {
    // An unknown key is reported at its own line, by its own path, one problem per key.
    const problems = result.error.issues.flatMap((issue) => {
      const base = issue.path as (string | number)[];
      const paths = issue.code === 'unrecognized_keys' ? issue.keys.map((k) => [...base, k]) : [base];
      return paths.map((path) => ({
        file,
        line: lineOf(path),
        field: path.join('.'),
        message: issue.code === 'unrecognized_keys' ? 'unknown field (misspelled?)' : issue.message,
      }));
    });
    problems.sort((a, b) => a.line - b.line);
    throw new SpecError(problems);
  }
  return { value: result.data, file, lineOf };
}

/**
 * The line of the deepest key on `path` that exists: a field's own key line, so a block mapping
 * points at `layout:` and not at its first child; a missing field points at its parent's key.
 */
function lineOfPath(doc: Document, path: (string | number)[], lineAt: (o: number) => number): number {
  for (let n = path.length; n > 0; n--) {
    const parent = n === 1 ? doc.contents : doc.getIn(path.slice(0, n - 1), true);
    const last = path[n - 1];
    if (isMap(parent)) {
      const pair = parent.items.find((p) => isScalar(p.key) && p.key.value === last);
      if (pair && isNode(pair.key) && pair.key.range) return lineAt(pair.key.range[0]);
    } else if (isSeq(parent) && typeof last === 'number') {
      const item = parent.items[last];
      if (isNode(item) && item.range) return lineAt(item.range[0]);
    }
  }
  return isNode(doc.contents) && doc.contents.range ? lineAt(doc.contents.range[0]) : 1;
}

function firstLine(s: string): string {
  return s.split('\n')[0];
}
