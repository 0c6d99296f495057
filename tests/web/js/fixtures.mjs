// The fixtures tests/web/fixtures.py wrote (tests/web/test_units.py sets SEGONE_WEB_FIXTURES and runs these tests).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export const FIXTURES = process.env.SEGONE_WEB_FIXTURES;
if (!FIXTURES) throw new Error('SEGONE_WEB_FIXTURES is not set: run these through tests/web/test_units.py');

export const cases = JSON.parse(readFileSync(join(FIXTURES, 'cases.json'), 'utf8'));

export function bytes(name) {
  return new Uint8Array(readFileSync(join(FIXTURES, name)));
}

export function f32(name) {
  const b = readFileSync(join(FIXTURES, name));
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
}

/** The largest |a - b| relative to max(1, |b|), and where. */
export function maxRelDiff(a, b) {
  if (a.length !== b.length) throw new Error(`lengths differ: ${a.length} vs ${b.length}`);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i]));
    if (!(d <= worst)) {
      worst = d;
      at = i;
    }
  }
  return { worst, at };
}
