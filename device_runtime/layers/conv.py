"""2-D convolution by im2col + BLAS matmul over chunks of samples.

Chunking is what keeps the im2col scratch small: columns of ``b`` samples at a time,
``b`` a divisor of the batch chosen so a chunk holds about ``NNFLEET_CONV_COLUMNS``
(default 1024) output positions. Small feature maps get big chunks, so the GEMMs stay
efficient; large ones go one sample at a time, straight into the output (no copy).

A single-sample chunk's forward unfolds blocks of whole output rows, one GEMM each into
its columns of the output (:mod:`..kernels.conv_rows`), so its scratch is one block and
never the whole ``(C*kh*kw, oh*ow)`` matrix (issue 13).

Backward runs over tiles of input channels (issue 13), so neither the im2col matrix of
the weight gradient nor the column derivative of the input derivative is ever whole:
each tile is ``tc`` channels, ``tc * kh * kw`` rows of them. Neither reduction is split
by it: dW's is over output positions (a tile of channels is a block of dW's columns) and
dcol's over output channels (a block of its rows); col2im sums each dx element's terms
from rows of its own channel only. The products themselves are computed in fixed blocks
of ``cblock`` channels (:data:`BLOCK_BYTES` of columns) whatever the tile, so the BLAS
calls, and hence every number, are the same for any tile size: BLAS does round a block
of a product differently from the whole product for some shapes (OpenBLAS's small-matrix
kernels), which is why the tile only groups blocks and never changes them. The tile size
comes from ``FinalizeContext.conv_tile`` (bytes of im2col scratch per tile), which the
cap fit chooses; the layer requests tile-sized scratch, so the plan knows its bytes.
"""

from __future__ import annotations

import math

import numpy as np

from .. import switches
from ..kernels import conv as K
from ..kernels.bias import add_col_bias
from ..kernels.conv_rows import im2col_rows, row_blocks
from .base import CD, CG, F, FinalizeContext, Layer, Shape, parse_ints
from .core import GRAD_BLOCK_BYTES

CONV_COLUMNS = switches.integer("NNFLEET_CONV_COLUMNS")
# Bytes of im2col per product block: the backward's rows of channels (the smallest
# tile) and a single sample's forward rows. Fewer, larger blocks cost fewer BLAS calls.
BLOCK_BYTES = switches.integer("NNFLEET_CONV_BLOCK")
# A single-sample step (micro-batch 1, where the cap fit goes when nothing larger fits)
# is the floor: its blocks are this much smaller (vgg16's pool 1.98 -> 0.92 MiB, its
# step ~1.26x slower). Fixed by the batch, so every plan of a micro-batch computes the
# same numbers; micro-batches differ from the full batch only by summation order anyway.
SINGLE_SAMPLE_SHRINK = 4


def block_bytes(n: int) -> tuple[int, int]:
    """``(im2col bytes, gradient bytes)`` per product block of a conv over batch ``n``."""
    if n > 1:
        return BLOCK_BYTES, GRAD_BLOCK_BYTES
    return max(1, BLOCK_BYTES // SINGLE_SAMPLE_SHRINK), \
        max(1, GRAD_BLOCK_BYTES // SINGLE_SAMPLE_SHRINK)


def resolve_padding(layer: Layer, raw: object, size: tuple[int, int], kernel: tuple[int, int],
                    stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """Padding -> (top, bottom, left, right) for 'same', 'valid' or explicit integers."""
    s = str(raw).strip().lower() if raw is not None else "valid"
    if s == "valid":
        return (0, 0, 0, 0)
    if s == "same":
        pads = []
        for n, k, st in zip(size, kernel, stride):
            total = max((math.ceil(n / st) - 1) * st + k - n, 0)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    p = parse_ints(layer.name, "padding", raw)
    if len(p) == 1:
        return (p[0],) * 4
    if len(p) == 2:
        return (p[0], p[0], p[1], p[1])
    if len(p) == 4:
        return (p[0], p[1], p[2], p[3])
    raise layer.fail(f"padding {raw!r} must be same, valid, or 1, 2 or 4 integers")


def out_size(n: int, k: int, s: int, p0: int, p1: int) -> int:
    return (n + p0 + p1 - k) // s + 1


def pick_chunk(batch: int, positions: int, columns: int = CONV_COLUMNS) -> int:
    """The largest divisor of ``batch`` whose chunk has at most ``columns`` positions."""
    best = 1
    for b in range(1, batch + 1):
        if batch % b == 0 and b * positions <= max(columns, positions):
            best = b
    return best


def channel_blocks(c: int, per_channel: int, tile_bytes: int, direct: bool,
                   block_bytes: int | None = None) -> tuple[int, int]:
    """``(cblock, tc)``: channels per product block (fixed by the shapes alone) and per
    tile (a multiple of it, at most ``tile_bytes`` of im2col rows; 0 = all channels).
    ``per_channel`` is one channel's im2col bytes. A 1x1 direct conv is one block."""
    if direct:
        return c, c
    cblock = max(1, min(c, (block_bytes or BLOCK_BYTES) // per_channel))
    if tile_bytes <= 0:
        return cblock, c
    return cblock, min(c, max(1, tile_bytes // (per_channel * cblock)) * cblock)


class Conv2D(Layer):
    type = "conv2d"
    keys = frozenset({"filters", "kernel_size", "stride", "padding", "dilation"})
    replayable = rematerializable = True

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        if len(shape) != 4:
            raise self.fail(f"needs a (batch, channels, height, width) input, got {shape}")
        n, c, h, w = shape
        filters = parse_ints(self.name, "filters", self.prop("filters", 0))[0]
        if filters <= 0:
            raise self.fail(f"needs filters > 0, got {self.prop('filters')!r}")
        kh, kw = parse_ints(self.name, "kernel_size", self.prop("kernel_size", "3,3"), 2)
        sh, sw = parse_ints(self.name, "stride", self.prop("stride", "1,1"), 2)
        if str(self.prop("dilation", "1")).replace(",", "").strip("1 ") != "":
            raise self.fail(f"dilation {self.prop('dilation')!r} is not supported (only 1)")
        if min(kh, kw, sh, sw) <= 0:
            raise self.fail("kernel_size and stride must be positive")
        pt, pb, pl, pr = resolve_padding(self, self.prop("padding", "valid"), (h, w), (kh, kw),
                                         (sh, sw))
        oh, ow = out_size(h, kh, sh, pt, pb), out_size(w, kw, sw, pl, pr)
        if oh <= 0 or ow <= 0:
            raise self.fail(f"kernel {kh}x{kw} does not fit the {h}x{w} input with padding "
                            f"{(pt, pb, pl, pr)}")
        self.check_output((n, filters, oh, ow), in_shapes)
        self.geom = (kh, kw, sh, sw, pt, pl, oh, ow)
        self.c, self.filters, self.hw = c, filters, oh * ow
        self.ckk = c * kh * kw
        self.use_bias = str(self.prop("disable_bias", "false")).lower() != "true"
        fan_in, fan_out = self.ckk, filters * kh * kw
        self.request_weight("weight", (filters, c, kh, kw),
                            self.prop("weight_initializer", "torch"),
                            fan_in, fan_out)
        if self.use_bias:
            self.request_weight("bias", (filters,), self.prop("bias_initializer", "torch"),
                                fan_in, fan_out)
        # 1x1, stride 1, no padding: the input already is its own im2col matrix.
        self.direct = (kh, kw, sh, sw, pt, pb, pl, pr) == (1, 1, 1, 1, 0, 0, 0, 0)
        self.b = pick_chunk(n, self.hw)
        ncol = self.b * self.hw
        self.kk = kh * kw
        self.blk, grad_blk = block_bytes(n)
        self._tiles(c, ncol, ctx.conv_tile)
        rows = self.tc * self.kk  # im2col rows of one tile
        # A single sample's forward unfolds blocks of output rows, one GEMM each: its
        # scratch is one block whatever the plan (the blocks are fixed by the shapes)
        self.fblocks = row_blocks(oh, ow, self.ckk, self.blk) \
            if self.b == 1 and not self.direct else []
        fcols = max((r1 - r0) * ow for r0, r1 in self.fblocks) if self.fblocks else ncol
        # Over several row blocks the output may still overwrite an input of its own shape
        # (stride 1): each block's outputs wait in ystage until the next block is unfolded,
        # which reads no input row above this block's first when blocks have >= pt rows.
        self.stage = len(self.fblocks) > 1 and (n, filters, oh, ow) == tuple(shape) and \
            (sh, sw) == (1, 1) and min(r1 - r0 for r0, r1 in self.fblocks) >= pt
        if self.stage:
            self.request_tensor("ystage", (filters * fcols,), {F})
        if not self.direct or self.b > 1:
            self.request_tensor("col_f", (self.ckk, fcols), {F})
            self.request_tensor("col_g", (rows, ncol), {CG})
        if self.b > 1:
            self.request_tensor("ych", (filters, ncol), {F})
            self.request_tensor("dych_g", (filters, ncol), {CG})
            self.request_tensor("dych_d", (filters, ncol), {CD})
        # dW is computed in blocks of output channels (rows) whether or not the blocks are
        # applied one by one (fused), and whatever the tile, so neither changes the numbers
        # (BLAS rounds a block product differently from a whole product).
        self.grows = max(1, min(self.filters, grad_blk // (4 * self.ckk)))
        self.nchunks = n // self.b
        if self.nchunks > 1:
            self.request_tensor("gtmp", (self.grows, self.ckk), {CG})
        self.request_tensor("dcol", (rows, ncol), {CD})
        self.input_needed = frozenset({CG})
        # With no backward (a frozen conv, or inference), the output may overwrite the
        # input when sizes agree: each chunk of samples is unfolded into col (or copied
        # into it) before its outputs are written, and later chunks read other samples.
        # Not when a single sample's input is its own col (1x1 direct, chunk of 1), nor
        # over row blocks unstaged (a block's outputs would overwrite rows later blocks read).
        self.in_place_forward_only = not (self.direct and self.b == 1) and \
            (len(self.fblocks) <= 1 or self.stage)
        return [(n, filters, oh, ow)]

    def enable_fused_apply(self) -> bool:
        # Fusing puts CD (which creates the input derivative) before CG; worth it only when
        # the whole gradient would cost more than that derivative being alive during CG.
        if self.filters * self.ckk <= math.prod(self.in_shapes[0]):
            return False
        # A block of output channels (rows) is applied once it is summed over the chunks:
        # at once with one chunk, or tiled (each rows block unfolds its chunks again);
        # whole layers over several chunks sum all of dW first (it is small then: only
        # large feature maps are chunked) and apply it in one call.
        rows = self.filters if self.nchunks > 1 and len(self.tiles) == 1 else self.grows
        self.request_tensor("gblock", (rows, self.ckk), {CG})
        if self.use_bias:
            self.request_tensor("gbias", (self.filters,), {CG})
        return True

    def _tiles(self, c: int, ncol: int, tile_bytes: int) -> None:
        self.cblock, self.tc = channel_blocks(c, 4 * self.kk * ncol, tile_bytes, self.direct,
                                              self.blk)
        self.tiles = [(t0, min(c, t0 + self.tc)) for t0 in range(0, c, self.tc)]
        # product blocks of each tile, as (first, last) rows of the tile's columns
        kk = self.kk
        self.tile_blocks = [[((j0 - t0) * kk, (min(t1, j0 + self.cblock) - t0) * kk)
                             for j0 in range(t0, t1, self.cblock)] for t0, t1 in self.tiles]

    def bind(self) -> None:
        x, y = self.io.x[0], self.io.y[0]
        dx, dy = self.io.dx[0], self.io.dy[0]
        n, b = x.shape[0], self.b
        self.w2 = self.w["weight"].reshape(self.filters, self.ckk)
        self.w2t = self.w2.T
        self.bias = self.w.get("bias")
        self.g2 = self.g["weight"].reshape(self.filters, self.ckk) if "weight" in self.g else None
        self.chunks = []
        for n0 in range(0, n, b):
            self.chunks.append((
                x[n0:n0 + b],
                y[n0:n0 + b].reshape(b, self.filters, self.hw),
                None if dx is None else dx[n0:n0 + b],
                None if dy is None else dy[n0:n0 + b].reshape(b, self.filters, self.hw),
                x[n0].reshape(self.c, self.hw) if self.direct else None,
            ))
        self.dy3 = None if dy is None else dy.reshape(n, self.filters, self.hw)
        self.staged = self.stage and np.may_share_memory(x, y)  # planned in place
        self.oblocks = [(o0, min(self.filters, o0 + self.grows))
                        for o0 in range(0, self.filters, self.grows)]

    def _col(self, name: str, xs: np.ndarray, xd: np.ndarray | None) -> np.ndarray:
        if self.direct and self.b == 1:
            return self.bound(xd, "x (direct view)")
        col = self.t[name]
        if self.direct:
            K.nchw_to_chunk(xs.reshape(self.b, self.c, self.hw), col)
        else:
            K.im2col(xs, col, *self.geom, 0)
        return col

    def _col_tile(self, xs: np.ndarray, xd: np.ndarray | None, t0: int, t1: int) -> np.ndarray:
        """The im2col rows of channels t0..t1 of this chunk (col_g holds one tile)."""
        if self.direct:  # one tile: the whole col (or x itself)
            return self._col("col_g", xs, xd)
        col = self.t["col_g"][:(t1 - t0) * self.kk]
        K.im2col(xs, col, *self.geom, t0)
        return col

    def _dych(self, name: str, dys: np.ndarray) -> np.ndarray:
        if self.b == 1:
            return dys[0]
        K.nchw_to_chunk(dys, self.t[name])
        return self.t[name]

    def forward(self, training: bool) -> None:
        for xs, ys, _, _, xd in self.chunks:
            if self.fblocks:
                self._forward_rows(xs, ys[0])
                continue
            col = self._col("col_f", xs, xd)
            if self.b == 1:
                np.matmul(self.w2, col, out=ys[0])
                if self.bias is not None:
                    add_col_bias(ys[0], self.bias)
            else:
                np.matmul(self.w2, col, out=self.t["ych"])
                if self.bias is not None:
                    K.chunk_to_nchw_bias(self.t["ych"], ys, self.bias)
                else:
                    K.chunk_to_nchw(self.t["ych"], ys)

    def replay(self) -> None:
        """The forward again, the same calls on the same input (its forward scratch is
        planned live again at the replay): the same bits."""
        self.forward(True)

    def replay_flops(self) -> int:
        return 2 * self.filters * self.ckk * self.hw * self.in_shapes[0][0]

    def _forward_rows(self, xs: np.ndarray, y: np.ndarray) -> None:
        """One sample, block of output rows by block: im2col of the rows, then their
        columns of y = W @ col (a strided view of y: BLAS writes it in place)."""
        flat, ow, blocks = self.t["col_f"].reshape(-1), self.geom[7], self.fblocks

        def unfold(r0: int, r1: int) -> np.ndarray:
            col = flat[:self.ckk * (r1 - r0) * ow].reshape(self.ckk, (r1 - r0) * ow)
            im2col_rows(xs, col, *self.geom, r0)
            return col

        col = unfold(*blocks[0])
        for k, (r0, r1) in enumerate(blocks):
            out = y[:, r0 * ow:r1 * ow]
            if self.staged:  # y is x: written once the next block is unfolded
                out = self.t["ystage"][:self.filters * (r1 - r0) * ow].reshape(out.shape)
            np.matmul(self.w2, col, out=out)
            if k + 1 < len(blocks):
                col = unfold(*blocks[k + 1])
            if self.staged:
                y[:, r0 * ow:r1 * ow] = out
        if self.bias is not None:
            add_col_bias(y, self.bias)

    def _target(self, o0: int, o1: int, whole: bool) -> np.ndarray:
        """Where dW rows o0..o1 go: the fused block (all rows when ``whole``) or dW."""
        if self.fused:
            return self.t["gblock"][o0:o1] if whole else self.t["gblock"][:o1 - o0]
        return self.bound(self.g2, "weight gradient")[o0:o1]

    def _products(self, g: np.ndarray, dych: np.ndarray, col: np.ndarray, o0: int, o1: int,
                  c0: int, blocks: list[tuple[int, int]], first: bool) -> None:
        """dW rows o0..o1, the blocks' columns, = dY rows @ their im2col rows, block by
        block, into ``g`` (the first chunk) or into gtmp (later chunks: :meth:`_add_chunk`
        adds it once every column is done); ``col`` holds the rows from channel c0's on."""
        off = c0 * self.kk
        dst = g if first else self.t["gtmp"][:o1 - o0]
        for a, b in blocks:
            np.matmul(dych[o0:o1], col[a:b].T, out=dst[:, off + a:off + b])

    def _add_chunk(self, g: np.ndarray, first: bool) -> None:
        if not first:  # whole rows, contiguous: no iteration buffer
            np.add(g, self.t["gtmp"][:g.shape[0]], out=g)

    def _apply_rows(self, g: np.ndarray, o0: int, o1: int) -> None:
        self.apply("weight", o0 * self.ckk, self.w2[o0:o1].reshape(-1), g.reshape(-1))

    def calc_gradient(self) -> None:
        """dW in fixed (output rows x channel block) products, each summed over the sample
        chunks in chunk order (the first written, each other added whole rows at a time
        through gtmp, as before tiling). Whole
        layers: one im2col per chunk. Tiled: rows block by rows block, each unfolding its
        chunks tile by tile (im2col again per rows block: the price of a small col), so a
        fused block is always whole rows, applied in one call."""
        many = len(self.chunks) > 1
        whole = len(self.tiles) == 1
        if whole:
            blocks = self.tile_blocks[0]
            for ci, (xs, _, _, dys, xd) in enumerate(self.chunks):
                col = self._col_tile(xs, xd, 0, self.c)
                dych = self._dych("dych_g", self.bound(dys, "dy"))
                for o0, o1 in self.oblocks:
                    g = self._target(o0, o1, many)
                    self._products(g, dych, col, o0, o1, 0, blocks, ci == 0)
                    self._add_chunk(g, ci == 0)
                    if self.fused and not many:
                        self._apply_rows(g, o0, o1)
            if self.fused and many:
                self._apply_rows(self.t["gblock"], 0, self.filters)
        else:
            dych = None
            for o0, o1 in self.oblocks:
                g = self._target(o0, o1, False)
                for ci, (xs, _, _, dys, xd) in enumerate(self.chunks):
                    if many or dych is None:  # one chunk: its dY layout serves every block
                        dych = self._dych("dych_g", self.bound(dys, "dy"))
                    for (t0, t1), blocks in zip(self.tiles, self.tile_blocks):
                        col = self._col_tile(xs, xd, t0, t1)
                        self._products(g, dych, col, o0, o1, t0, blocks, ci == 0)
                    self._add_chunk(g, ci == 0)
                if self.fused:
                    self._apply_rows(g, o0, o1)
        if self.bias is not None:
            gbias = self.t["gbias"] if self.fused else self.g["bias"]
            K.bias_grad_nchw(self.bound(self.dy3, "dy"), gbias, False)
            if self.fused:
                self.apply("bias", 0, self.bias, gbias)

    def calc_derivative(self) -> None:
        if self.io.dx[0] is None:
            return
        for _, _, dxs, dys, _ in self.chunks:
            dxs = self.bound(dxs, "dx")
            dych = self._dych("dych_d", self.bound(dys, "dy"))
            if self.direct:
                dcol = self.t["dcol"]
                np.matmul(self.w2t, dych, out=dcol)
                if self.b == 1:
                    np.copyto(dxs[0].reshape(self.c, self.hw), dcol)
                else:
                    K.chunk_to_nchw(dcol, dxs.reshape(self.b, self.c, self.hw))
                continue
            for (t0, t1), blocks in zip(self.tiles, self.tile_blocks):
                dcol = self.t["dcol"][:(t1 - t0) * self.kk]
                w2t = self.w2t[t0 * self.kk:t1 * self.kk]
                for a, b in blocks:
                    np.matmul(w2t[a:b], dych, out=dcol[a:b])
                K.col2im(dcol, dxs, *self.geom, t0)
