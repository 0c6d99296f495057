// MONAI's SlidingWindowInferer (monai.inferers.utils.sliding_window_inference) for one image, sw_batch_size 1:
// symmetric zero padding up to the window size, window starts of _get_scan_interval / dense_patch_slices, a
// gaussian importance map (monai.data.utils.compute_importance_map), weighted averaging, and the padding removed.
// Arrays are C order; an image is [n0, n1, n2] (one channel), an output [C, n0, n1, n2].

/** monai.inferers.utils._get_scan_interval */
export function scanInterval(imageSize, roiSize, overlap) {
  return imageSize.map((size, i) => {
    if (roiSize[i] === size) return roiSize[i];
    const interval = Math.floor(roiSize[i] * (1 - overlap));
    return interval > 0 ? interval : 1;
  });
}

/** The window starts along each axis, as monai.data.utils.dense_patch_slices. */
export function windowStarts(imageSize, roiSize, interval) {
  return imageSize.map((size, i) => {
    const patch = Math.min(roiSize[i], size);
    let scanNum = 1;
    if (interval[i] !== 0) {
      const num = Math.ceil(size / interval[i]);
      let found = null;
      for (let d = 0; d < num; d++) {
        if (d * interval[i] + patch >= size) {
          found = d;
          break;
        }
      }
      scanNum = found === null ? 1 : found + 1;
    }
    const starts = [];
    for (let idx = 0; idx < scanNum; idx++) {
      let s = idx * interval[i];
      s -= Math.max(s + patch - size, 0);
      starts.push(s);
    }
    return starts;
  });
}

/** Every window's start [s0, s1, s2], in MONAI's order (the last axis fastest). */
export function windowPositions(imageSize, roiSize, overlap) {
  const [a, b, c] = windowStarts(imageSize, roiSize, scanInterval(imageSize, roiSize, overlap));
  const out = [];
  for (const x of a) for (const y of b) for (const z of c) out.push([x, y, z]);
  return out;
}

/** monai.data.utils.compute_importance_map(mode="gaussian"): float32 [r0, r1, r2], clamped at max(min, 1e-3). */
export function gaussianImportanceMap(roiSize, sigmaScale = 0.125) {
  const f = Math.fround;
  const axes = roiSize.map((size) => {
    const sigma = size * sigmaScale;
    const g = new Float32Array(size);
    for (let k = 0; k < size; k++) {
      const x = f(-(size - 1) / 2 + k);
      g[k] = f(Math.exp(f(f(x * x) / f(-2 * sigma * sigma))));
    }
    return g;
  });
  const [r0, r1, r2] = roiSize;
  const map = new Float32Array(r0 * r1 * r2);
  let min = Infinity;
  for (let i = 0, o = 0; i < r0; i++) {
    for (let j = 0; j < r1; j++) {
      const gij = f(axes[0][i] * axes[1][j]);
      for (let k = 0; k < r2; k++, o++) {
        map[o] = gij * axes[2][k];
        if (map[o] < min) min = map[o];
      }
    }
  }
  const floor = Math.max(min, 1e-3);
  for (let o = 0; o < map.length; o++) if (map[o] < floor) map[o] = floor;
  return map;
}

/** MONAI's padding: [front, back] per axis, diff // 2 in front, so the image is at least roiSize. */
export function padAmounts(dims, roiSize) {
  return dims.map((d, i) => {
    const diff = Math.max(roiSize[i] - d, 0);
    const half = Math.floor(diff / 2);
    return [half, diff - half];
  });
}

function padVolume(vol, pads) {
  if (pads.every(([a, b]) => a === 0 && b === 0)) return vol;
  const [n0, n1, n2] = vol.dims;
  const dims = vol.dims.map((d, i) => d + pads[i][0] + pads[i][1]);
  const data = new Float32Array(dims[0] * dims[1] * dims[2]);
  for (let a = 0; a < n0; a++) {
    for (let b = 0; b < n1; b++) {
      const src = (a * n1 + b) * n2;
      const dst = ((a + pads[0][0]) * dims[1] + b + pads[1][0]) * dims[2] + pads[2][0];
      data.set(vol.data.subarray(src, src + n2), dst);
    }
  }
  return { dims, data };
}

function extractWindow(vol, start, roi, out) {
  const [, p1, p2] = vol.dims;
  const [r0, r1, r2] = roi;
  for (let a = 0; a < r0; a++) {
    for (let b = 0; b < r1; b++) {
      const src = ((start[0] + a) * p1 + start[1] + b) * p2 + start[2];
      out.set(vol.data.subarray(src, src + r2), (a * r1 + b) * r2);
    }
  }
  return out;
}

/**
 * Sliding-window inference of one image.
 *
 * @param {{dims: number[], data: Float32Array}} vol the preprocessed image [n0, n1, n2]
 * @param {object} options
 * @param {number[]} options.roiSize window size
 * @param {number} options.overlap MONAI's overlap (0.25)
 * @param {number} [options.sigmaScale] gaussian sigma as a fraction of the window size (0.125)
 * @param {(window: Float32Array, roiSize: number[]) => Promise<{data: Float32Array, channels: number}>}
 *   options.predict runs the network on one window [r0, r1, r2]; returns [C, r0, r1, r2]
 * @param {(done: number, total: number) => void} [options.onProgress]
 * @returns {Promise<{dims: number[], channels: number, data: Float32Array, windows: number}>} [C, n0, n1, n2]
 */
export async function slidingWindowInference(vol, { roiSize, overlap, sigmaScale = 0.125, predict, onProgress }) {
  const pads = padAmounts(vol.dims, roiSize);
  const padded = padVolume(vol, pads);
  const size = padded.dims;
  const positions = windowPositions(size, roiSize, overlap);
  const patch = roiSize.map((r, i) => Math.min(r, size[i]));
  const weights = gaussianImportanceMap(patch, sigmaScale);
  const [r0, r1, r2] = patch;
  const [s0, s1, s2] = size;
  const nPad = s0 * s1 * s2;
  const window = new Float32Array(r0 * r1 * r2);
  const count = new Float32Array(nPad);
  let output = null;
  let channels = 0;
  for (let w = 0; w < positions.length; w++) {
    const start = positions[w];
    extractWindow(padded, start, patch, window);
    const result = await predict(window, patch);
    if (output === null) {
      channels = result.channels;
      output = new Float32Array(channels * nPad);
    }
    const rn = r0 * r1 * r2;
    for (let a = 0; a < r0; a++) {
      for (let b = 0; b < r1; b++) {
        const dst = ((start[0] + a) * s1 + start[1] + b) * s2 + start[2];
        const src = (a * r1 + b) * r2;
        for (let k = 0; k < r2; k++) {
          const wt = weights[src + k];
          count[dst + k] += wt;
          for (let c = 0; c < channels; c++) {
            output[c * nPad + dst + k] += Math.fround(result.data[c * rn + src + k] * wt);
          }
        }
      }
    }
    if (onProgress) onProgress(w + 1, positions.length);
  }
  for (let c = 0; c < channels; c++) {
    for (let i = 0; i < nPad; i++) output[c * nPad + i] /= count[i];
  }
  // crop the padding
  const [n0, n1, n2] = vol.dims;
  const n = n0 * n1 * n2;
  const data = new Float32Array(channels * n);
  for (let c = 0; c < channels; c++) {
    for (let a = 0; a < n0; a++) {
      for (let b = 0; b < n1; b++) {
        const src = c * nPad + ((a + pads[0][0]) * s1 + b + pads[1][0]) * s2 + pads[2][0];
        data.set(output.subarray(src, src + n2), c * n + (a * n1 + b) * n2);
      }
    }
  }
  return { dims: vol.dims.slice(), channels, data, windows: positions.length };
}

/** Per-voxel argmax over the channels of [C, N] (the first maximum wins, as torch.argmax). */
export function argmax(data, channels) {
  const n = data.length / channels;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    let best = 0;
    let bestValue = data[i];
    for (let c = 1; c < channels; c++) {
      const v = data[c * n + i];
      if (v > bestValue) {
        best = c;
        bestValue = v;
      }
    }
    out[i] = best;
  }
  return out;
}
