// NIfTI-1 reading and label-map writing, in the browser and in node (no dependencies).
//
// Volumes are held as { dims: [n0, n1, n2], data } in C order (the last axis varies fastest), the layout of the
// numpy array nibabel and MONAI hand to the network ([X, Y, Z] of the file). NIfTI stores x fastest, so reading
// and writing transpose. The affine is nibabel's "best affine" (sform, else qform, else the base affine), the one
// MONAI's LoadImage (NibabelReader) gives Orientationd.

const HEADER_SIZE = 348;
const MAX_VOXELS = 512 * 512 * 512;

// NIfTI datatype code -> [name, bytes per voxel, DataView getter]
const DATATYPES = {
  2: ['uint8', 1, 'getUint8'],
  4: ['int16', 2, 'getInt16'],
  8: ['int32', 4, 'getInt32'],
  16: ['float32', 4, 'getFloat32'],
  64: ['float64', 8, 'getFloat64'],
  256: ['int8', 1, 'getInt8'],
  512: ['uint16', 2, 'getUint16'],
  768: ['uint32', 4, 'getUint32'],
  1024: ['int64', 8, 'getBigInt64'],
  1280: ['uint64', 8, 'getBigUint64'],
};

/** True when the bytes start with the gzip magic number. */
export function isGzip(bytes) {
  return bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b;
}

async function streamThrough(bytes, transform) {
  const stream = new Blob([bytes]).stream().pipeThrough(transform);
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Gunzips with the platform's DecompressionStream. */
export function gunzip(bytes) {
  return streamThrough(bytes, new DecompressionStream('gzip'));
}

/** Gzips with the platform's CompressionStream. */
export function gzip(bytes) {
  return streamThrough(bytes, new CompressionStream('gzip'));
}

function quatToMatrix(b, c, d) {
  // nibabel.quaternions.fillpositive + quat2mat
  const threshold = -3 * 1.1920928955078125e-7;
  let w2 = 1 - (b * b + c * c + d * d);
  if (w2 < 0) {
    if (w2 < threshold) throw new Error(`invalid qform quaternion (b, c, d) = (${b}, ${c}, ${d})`);
    w2 = 0;
  }
  const a = Math.sqrt(w2);
  const n = a * a + b * b + c * c + d * d;
  if (n < 2.220446049250313e-16) return [[1, 0, 0], [0, 1, 0], [0, 0, 1]];
  const s = 2 / n;
  const [X, Y, Z] = [b * s, c * s, d * s];
  const [wX, wY, wZ] = [a * X, a * Y, a * Z];
  const [xX, xY, xZ] = [b * X, b * Y, b * Z];
  const [yY, yZ, zZ] = [c * Y, c * Z, d * Z];
  return [
    [1 - (yY + zZ), xY - wZ, xZ + wY],
    [xY + wZ, 1 - (xX + zZ), yZ - wX],
    [xZ - wY, yZ + wX, 1 - (xX + yY)],
  ];
}

/** The qform affine (4x4, rows) of a parsed header, as nibabel's Nifti1Header.get_qform. */
export function qformAffine(h) {
  const R = quatToMatrix(h.quatern[0], h.quatern[1], h.quatern[2]);
  const qfac = h.pixdim[0] === -1 ? -1 : 1;
  const vox = [h.pixdim[1], h.pixdim[2], h.pixdim[3] * qfac];
  const out = [];
  for (let i = 0; i < 3; i++) out.push([R[i][0] * vox[0], R[i][1] * vox[1], R[i][2] * vox[2], h.qoffset[i]]);
  out.push([0, 0, 0, 1]);
  return out;
}

/** The base affine of a header without sform/qform (nibabel's shape_zoom_affine with the x flip). */
export function baseAffine(h) {
  const zooms = [1, 2, 3].map((i) => (h.dim[0] >= i ? h.pixdim[i] : 1));
  const shape = [1, 2, 3].map((i) => (h.dim[0] >= i ? h.dim[i] : 1));
  zooms[0] = -zooms[0];
  const out = [[zooms[0], 0, 0, 0], [0, zooms[1], 0, 0], [0, 0, zooms[2], 0], [0, 0, 0, 1]];
  for (let i = 0; i < 3; i++) out[i][3] = (-(shape[i] - 1) / 2) * zooms[i];
  return out;
}

/** nibabel's get_best_affine: the sform when sform_code != 0, else the qform when qform_code != 0, else base. */
export function bestAffine(h) {
  if (h.sformCode !== 0) return [h.srow[0].slice(), h.srow[1].slice(), h.srow[2].slice(), [0, 0, 0, 1]];
  if (h.qformCode !== 0) return qformAffine(h);
  return baseAffine(h);
}

/** Parses a NIfTI-1 header (348 bytes, either byte order). */
export function parseHeader(bytes) {
  if (bytes.length < HEADER_SIZE) throw new Error(`not a NIfTI file: ${bytes.length} bytes, a header takes 348`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let le = true;
  const sizeofHdr = view.getInt32(0, true);
  if (sizeofHdr !== HEADER_SIZE) {
    if (view.getInt32(0, false) === HEADER_SIZE) le = false;
    else if (sizeofHdr === 540 || view.getInt32(0, false) === 540) {
      throw new Error('NIfTI-2 files are not supported; save the image as NIfTI-1');
    } else throw new Error('not a NIfTI-1 file (sizeof_hdr is not 348)');
  }
  const i16 = (o) => view.getInt16(o, le);
  const f32 = (o) => view.getFloat32(o, le);
  const magic = String.fromCharCode(...bytes.slice(344, 347));
  if (magic !== 'n+1' && magic !== 'ni1') throw new Error(`not a NIfTI-1 file (magic "${magic}")`);
  if (magic === 'ni1') throw new Error('a .hdr/.img pair is not supported; save the image as a single .nii(.gz)');
  const dim = Array.from({ length: 8 }, (_, i) => i16(40 + 2 * i));
  const pixdim = Array.from({ length: 8 }, (_, i) => f32(76 + 4 * i));
  return {
    littleEndian: le,
    dim,
    pixdim,
    datatype: i16(70),
    bitpix: i16(72),
    voxOffset: f32(108),
    sclSlope: f32(112),
    sclInter: f32(116),
    qformCode: i16(252),
    sformCode: i16(254),
    quatern: [f32(256), f32(260), f32(264)],
    qoffset: [f32(268), f32(272), f32(276)],
    srow: [0, 1, 2].map((r) => [0, 1, 2, 3].map((c) => f32(280 + 16 * r + 4 * c))),
  };
}

/**
 * Reads a NIfTI-1 file (.nii, or gzipped .nii.gz) into a float32 volume.
 *
 * Scaling (scl_slope, scl_inter) is applied as nibabel does. Only 3D images (or 4D/5D ones with one volume) are
 * accepted, as the bundle's CheckInputd does.
 *
 * @param {ArrayBuffer|Uint8Array} input the file's bytes
 * @returns {Promise<{header, headerBytes: Uint8Array, dims: number[], data: Float32Array, affine: number[][]}>}
 */
export async function readNifti(input) {
  let bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  if (isGzip(bytes)) bytes = await gunzip(bytes);
  const header = parseHeader(bytes);
  const ndim = header.dim[0];
  if (ndim < 3 || ndim > 7) throw new Error(`expected a 3D image, the header has ${ndim} dimensions`);
  const dims = header.dim.slice(1, 4);
  const extra = header.dim.slice(4, ndim + 1).reduce((a, b) => a * b, 1);
  if (extra !== 1) throw new Error(`expected a 3D image with one channel, got dimensions ${header.dim.slice(1, ndim + 1)}`);
  if (dims.some((d) => d < 1)) throw new Error(`invalid image size ${dims}`);
  const n = dims[0] * dims[1] * dims[2];
  if (n > MAX_VOXELS) throw new Error(`image of ${dims.join('x')} voxels is larger than this page handles`);
  const type = DATATYPES[header.datatype];
  if (!type) throw new Error(`unsupported NIfTI datatype ${header.datatype}`);
  const [, size, getter] = type;
  const offset = Math.max(Math.floor(header.voxOffset), HEADER_SIZE);
  if (bytes.length < offset + n * size) {
    throw new Error(`truncated NIfTI file: ${bytes.length} bytes, the header needs ${offset + n * size}`);
  }
  let slope = header.sclSlope;
  let inter = header.sclInter;
  if (!Number.isFinite(slope) || slope === 0) [slope, inter] = [1, 0];
  if (!Number.isFinite(inter)) inter = 0;
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, n * size);
  const data = new Float32Array(n);
  const [n0, n1, n2] = dims;
  const big = size === 8 && getter.startsWith('getBig');
  // file index x + n0 * (y + n1 * z) -> C-order index (x * n1 + y) * n2 + z
  let f = 0;
  for (let z = 0; z < n2; z++) {
    for (let y = 0; y < n1; y++) {
      for (let x = 0; x < n0; x++, f++) {
        let v = big ? Number(view[getter](f * size, header.littleEndian)) : view[getter](f * size, header.littleEndian);
        data[(x * n1 + y) * n2 + z] = v * slope + inter;
      }
    }
  }
  return { header, headerBytes: bytes.slice(0, HEADER_SIZE), dims, data, affine: bestAffine(header) };
}

/**
 * A uint8 label map in the input's geometry: the input's header (dimensions, pixdim, qform, sform, units, byte
 * order) with the data type changed to uint8, no scaling and no extensions.
 *
 * @param {{headerBytes: Uint8Array, header, dims: number[]}} image what readNifti returned for the input
 * @param {Uint8Array} labels C-order labels over image.dims
 * @param {string} description the header's descrip (at most 79 characters)
 * @returns {Uint8Array} the .nii bytes
 */
export function writeNiftiLabels(image, labels, description = 'SegOne label map') {
  const [n0, n1, n2] = image.dims;
  const n = n0 * n1 * n2;
  if (labels.length !== n) throw new Error(`labels hold ${labels.length} voxels, the image ${n}`);
  const out = new Uint8Array(352 + n);
  out.set(image.headerBytes.subarray(0, HEADER_SIZE));
  const view = new DataView(out.buffer);
  const le = image.header.littleEndian;
  view.setInt16(70, 2, le); // datatype uint8
  view.setInt16(72, 8, le); // bitpix
  view.setFloat32(108, 352, le); // vox_offset
  view.setFloat32(112, 1, le); // scl_slope
  view.setFloat32(116, 0, le); // scl_inter
  view.setInt16(68, 0, le); // intent_code
  let max = 0;
  for (let i = 0; i < n; i++) if (labels[i] > max) max = labels[i];
  view.setFloat32(124, max, le); // cal_max
  view.setFloat32(128, 0, le); // cal_min
  view.setInt32(140, max, le); // glmax
  view.setInt32(144, 0, le); // glmin
  const descrip = new TextEncoder().encode(description.slice(0, 79));
  out.fill(0, 148, 228);
  out.set(descrip, 148);
  out.set([0x6e, 0x2b, 0x31, 0], 344); // "n+1\0"
  // bytes 348..351: no extension
  let f = 352;
  for (let z = 0; z < n2; z++) {
    for (let y = 0; y < n1; y++) {
      for (let x = 0; x < n0; x++, f++) out[f] = labels[(x * n1 + y) * n2 + z];
    }
  }
  return out;
}

/** The output name the bundle's SaveLabelMapd gives: `<input stem>_seg.nii.gz`. */
export function outputName(inputName, postfix = 'seg') {
  let name = inputName.split(/[\\/]/).pop();
  for (const suffix of ['.nii.gz', '.nii']) {
    if (name.toLowerCase().endsWith(suffix)) {
      name = name.slice(0, -suffix.length);
      break;
    }
  }
  return `${name}_${postfix}.nii.gz`;
}
