// A slice viewer on a canvas: the image in RAS orientation with the label map overlaid (opacity control), one
// plane at a time (axial, coronal, sagittal), scrolled with a slider or the mouse wheel.

export const PLANES = {
  // fixed axis; the screen's horizontal axis runs along `h` (towards R or A), its vertical along `v` (up: A or S)
  axial: { axis: 2, h: 0, v: 1 },
  coronal: { axis: 1, h: 0, v: 2 },
  sagittal: { axis: 0, h: 1, v: 2 },
};

export const COLORS = [
  [0, 0, 0],
  [230, 60, 60],
  [60, 200, 90],
  [70, 130, 240],
  [240, 200, 40],
  [200, 80, 220],
  [40, 210, 220],
];

/** Display window [low, high] of an image: its 0.5th and 99.5th percentiles (on a sample of at most 2^18 voxels). */
export function displayRange(data) {
  const stride = Math.max(1, Math.floor(data.length / 262144));
  const sample = [];
  for (let i = 0; i < data.length; i += stride) sample.push(data[i]);
  sample.sort((a, b) => a - b);
  const low = sample[Math.floor(0.005 * (sample.length - 1))];
  let high = sample[Math.floor(0.995 * (sample.length - 1))];
  if (!(high > low)) high = low + 1;
  return [low, high];
}

/**
 * The C-order voxel indices of one slice, row by row from the top of the screen: [width, height, indices].
 *
 * @param {number[]} dims [n0, n1, n2] (RAS)
 * @param {string} plane a key of PLANES
 * @param {number} k the slice along the plane's fixed axis
 */
export function sliceIndices(dims, plane, k) {
  const { axis, h, v } = PLANES[plane];
  const strides = [dims[1] * dims[2], dims[2], 1];
  const width = dims[h];
  const height = dims[v];
  const indices = new Int32Array(width * height);
  let o = 0;
  for (let row = 0; row < height; row++) {
    const vi = height - 1 - row; // up is +A / +S
    for (let col = 0; col < width; col++) indices[o++] = k * strides[axis] + vi * strides[v] + col * strides[h];
  }
  return [width, height, indices];
}

export class SliceViewer {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {(k: number, count: number) => void} [onSlice] called when the slice changes
   */
  constructor(canvas, onSlice) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d');
    this.onSlice = onSlice || (() => {});
    this.volume = null;
    this.labels = null;
    this.plane = 'axial';
    this.slice = 0;
    this.opacity = 0.5;
    canvas.addEventListener('wheel', (event) => {
      if (!this.volume) return;
      event.preventDefault();
      this.setSlice(this.slice + (event.deltaY > 0 ? -1 : 1));
    }, { passive: false });
  }

  /** Shows a new image ({dims, data} in RAS, voxel sizes `spacing`); clears the labels. */
  setVolume(volume, spacing = [1, 1, 1]) {
    this.volume = volume;
    this.spacing = spacing;
    this.range = displayRange(volume.data);
    this.labels = null;
    this.setPlane(this.plane);
  }

  /** Overlays a label map (Uint8Array over the image's voxels, RAS) or removes it (null). */
  setLabels(labels) {
    this.labels = labels;
    this.render();
  }

  setPlane(plane) {
    this.plane = plane;
    if (!this.volume) return;
    this.setSlice(Math.floor(this.volume.dims[PLANES[plane].axis] / 2));
  }

  sliceCount() {
    return this.volume ? this.volume.dims[PLANES[this.plane].axis] : 0;
  }

  setSlice(k) {
    if (!this.volume) return;
    this.slice = Math.min(Math.max(0, Math.round(k)), this.sliceCount() - 1);
    this.onSlice(this.slice, this.sliceCount());
    this.render();
  }

  setOpacity(opacity) {
    this.opacity = opacity;
    this.render();
  }

  render() {
    if (!this.volume) return;
    const [width, height, indices] = sliceIndices(this.volume.dims, this.plane, this.slice);
    const { h, v } = PLANES[this.plane];
    this.canvas.width = width;
    this.canvas.height = height;
    // physical aspect ratio, scaled to fit the page
    const w = width * this.spacing[h];
    const ht = height * this.spacing[v];
    const scale = Math.min(512 / w, 512 / ht);
    this.canvas.style.width = `${Math.round(w * scale)}px`;
    this.canvas.style.height = `${Math.round(ht * scale)}px`;
    const image = this.ctx.createImageData(width, height);
    const [low, high] = this.range;
    const span = 255 / (high - low);
    const a = this.opacity;
    for (let p = 0; p < indices.length; p++) {
      const i = indices[p];
      const g = Math.min(255, Math.max(0, (this.volume.data[i] - low) * span));
      let rgb = [g, g, g];
      const label = this.labels ? this.labels[i] : 0;
      if (label) {
        const color = COLORS[label % COLORS.length] || COLORS[1];
        rgb = rgb.map((x, c) => (1 - a) * x + a * color[c]);
      }
      image.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * p);
    }
    this.ctx.putImageData(image, 0, 0);
  }
}
