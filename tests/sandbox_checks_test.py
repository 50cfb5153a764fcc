"""Pure host-side logic of the sandbox: checks, static analysis, framing.

No worker process is started here: these are the functions that decide
validity and that read untrusted bytes, tested on hand-built inputs.
"""

import io
import os
import struct
import zlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl.testing import absltest
import ml_collections
import numpy as np
from PIL import Image

from evejax.sandbox import checks
from evejax.sandbox import programs
from evejax.sandbox import seccomp
from evejax.sandbox import wire
from evejax.sandbox.jobs import EveJob, Reason, SvgJob

CFG = checks.CheckConfig()


def _png_bomb(w, h):
  def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(
        ">I", zlib.crc32(body))
  return (b"\x89PNG\r\n\x1a\n"
          + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def _gradient(h=96, w=128, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(20, 255, (h, w, 3), dtype=np.uint8)


class ChecksTest(absltest.TestCase):

  def test_pixel_bounds(self):
    self.assertIsNone(checks.pixel_count_problem((100, 100, 3), CFG))
    self.assertIn("fewer", checks.pixel_count_problem((10, 10, 3), CFG))
    self.assertIn("more", checks.pixel_count_problem((2000, 1001, 3), CFG))

  def test_opaque_fraction_uses_alpha_threshold(self):
    img = np.full((10, 10, 4), 200, np.uint8)
    img[..., 3] = 9  # below opaque_alpha=10
    img[:2, :, 3] = 10
    self.assertAlmostEqual(checks.opaque_fraction(img, CFG), 0.2)
    self.assertEqual(checks.opaque_fraction(img[..., :3], CFG), 1.0)

  def test_near_black_counts_only_opaque_pixels(self):
    img = np.full((10, 10, 4), 255, np.uint8)
    img[:5, :, :3] = 0  # half black ...
    img[:5, :, 3] = 0   # ... but transparent
    self.assertEqual(checks.near_black_fraction(img, CFG), 0.0)
    img[:5, :, 3] = 255
    self.assertAlmostEqual(checks.near_black_fraction(img, CFG), 0.5)
    # Luma uses Rec.709 weights: pure blue (luma 0.0722*255 = 18) is not black.
    blue = np.zeros((4, 4, 3), np.uint8)
    blue[..., 2] = 255
    self.assertEqual(checks.near_black_fraction(blue, CFG), 0.0)

  def test_near_black_matches_full_float_luma(self):
    # The fast path (float luma only where green can pass) must count exactly
    # what converting every pixel does, at and around each threshold.
    def reference(img, cfg):
      valid = checks.opaque_mask(img, cfg)
      rgb = img[..., :3].astype(np.float32)
      luma = 0.2126 * rgb[..., 0] + 0.7152 * rgb[..., 1] + 0.0722 * rgb[..., 2]
      n = int(valid.sum())
      return float(((luma <= cfg.near_black_luma) & valid).sum()) / n if n else 0.0

    grid = np.stack(np.meshgrid(np.arange(48), np.arange(12), np.arange(96),
                                indexing="ij"), -1).reshape(1, -1, 3)
    rng = np.random.default_rng(1)
    images = [grid.astype(np.uint8)]
    for c in (3, 4):
      for high in (8, 40, 256):
        images.append(rng.integers(0, high, (31, 47, c), dtype=np.uint8))
    for limit in (5.0, 0.0, -1.0, 4.9999, 5.0001, 0.7152, 30.0, 255.0, 300.0):
      cfg = checks.CheckConfig(near_black_luma=limit)
      for k, img in enumerate(images):
        with self.subTest(limit=limit, image=k):
          self.assertEqual(checks.near_black_fraction(img, cfg),
                           reference(img, cfg))

  def test_image_problem_rotation_allowance(self):
    img = np.full((100, 100, 3), 180, np.uint8)
    img[:40] = 0  # 40% black
    self.assertIn("near-black", checks.image_problem(img, CFG, rotation=False))
    self.assertIsNone(checks.image_problem(img, CFG, rotation=True))
    img[:80] = 0
    self.assertIn("near-black", checks.image_problem(img, CFG, rotation=True))

  def test_image_problem_opacity(self):
    img = np.full((100, 100, 4), 180, np.uint8)
    img[..., 3] = 0
    img[:5, :, 3] = 255
    self.assertIn("opaque", checks.image_problem(img, CFG))

  def test_near_duplicates(self):
    a = _gradient(seed=1)
    b = np.ascontiguousarray(a[::-1])  # flipped: a different hash
    c = a.copy()
    c[0, 0] = 0  # one pixel off: the same perceptual hash
    self.assertEqual(checks.near_duplicates([a, b, c], CFG), [(0, 2)])
    # Sizes more than 5% apart are never compared.
    small = np.asarray(Image.fromarray(a).resize((110, 80)))
    self.assertEqual(checks.near_duplicates([a, small], CFG), [])
    self.assertIn("near-identical", checks.outputs_problem([a, c], CFG))
    self.assertIsNone(checks.outputs_problem([a, b], CFG))

  def test_render_size_rules(self):
    self.assertIsNone(checks.render_size_problem(800, 600, CFG))
    self.assertIn("side", checks.render_size_problem(20000, 600, CFG))
    self.assertIn("aspect", checks.render_size_problem(5000, 10, CFG))
    self.assertEqual(checks.render_scale(1000, 1000, CFG), 1.0)
    s = checks.render_scale(4000, 4000, CFG)
    self.assertAlmostEqual(4000 * s * 4000 * s, CFG.max_render_pixels, delta=1)

  def test_decode_refuses_bombs_before_decoding(self):
    with self.assertRaises(checks.ImageTooLarge):
      checks.decode_image(_png_bomb(60000, 60000), max_pixels=10_000_000)
    buf = io.BytesIO()
    Image.fromarray(_gradient()).save(buf, format="PNG")
    out = checks.decode_image(buf.getvalue(), max_pixels=10_000_000)
    np.testing.assert_array_equal(out, _gradient())
    with self.assertRaises(checks.ImageTooLarge):
      checks.decode_image(buf.getvalue(), max_pixels=1000)

  def test_config_from_configdict(self):
    cfg = checks.CheckConfig.from_config(
        ml_collections.ConfigDict({"max_pixels": 123, "min_pixels": 4}))
    self.assertEqual((cfg.max_pixels, cfg.min_pixels), (123, 4))
    with self.assertRaisesRegex(ValueError, "unknown keys.*max_pixel"):
      checks.CheckConfig.from_config({"max_pixel": 1})


VALID = """from PIL import ImageDraw


def edit_image(img, x, color=(255, 0, 0)):
    ImageDraw.Draw(img).rectangle([x, 4, x + 20, 30], fill=color)
    return img


args_list = [{"x": 2}, {"x": 20}, {"x": 40, "color": (0, 0, 255)}, {"x": 60}]
"""


class StaticAnalysisTest(absltest.TestCase):

  def prep(self, source, num_args=4, cfg=CFG):
    return programs.prepare(EveJob(source, _gradient(), num_args), cfg)

  def assertFails(self, source, reason, pattern, **kw):
    out = self.prep(source, **kw)
    self.assertIsInstance(out, programs.JobResult, out)
    self.assertEqual(out.reason, reason, out.detail)
    self.assertRegex(out.detail, pattern)

  def test_valid_program(self):
    out = self.prep(VALID)
    self.assertIsInstance(out, programs.Prepared)
    self.assertEqual(out.args[2], {"x": 40, "color": (0, 0, 255)})
    # Tuples survive: each dict travels as its own literal text.
    self.assertEqual(out.request["args"][2], '{"x": 40, "color": (0, 0, 255)}')
    self.assertTrue(out.function_source.startswith("from PIL import"))
    self.assertTrue(out.function_source.endswith("return img"))
    self.assertEqual(out.expect_images, 4)
    self.assertLen(out.payload, 96 * 128 * 3)

  def test_no_code_and_syntax(self):
    self.assertFails("   \n", Reason.NO_CODE, "empty")
    self.assertFails("def edit_image(img:\n", Reason.SYNTAX_ERROR, "line 1")
    self.assertFails(b"x = '\xff'", Reason.SYNTAX_ERROR, "UTF-8")
    self.assertFails("x = 1\0", Reason.SYNTAX_ERROR, "null")

  def test_contract_violations(self):
    self.assertFails("args_list = []", Reason.INVALID_PROGRAM, "edit_image")
    body = "def edit_image(img, **p):\n    return img\n"
    self.assertFails(body, Reason.INVALID_PROGRAM, "args_list")
    self.assertFails(body + "args_list = [{'a': 1}] * 4",
                     Reason.INVALID_PROGRAM, "literal")
    self.assertFails(body + "args_list = [{'a': i} for i in range(4)]",
                     Reason.INVALID_PROGRAM, "literal")
    self.assertFails(body + "args_list = [{'a': 1}, {'a': 2}, {'a': 3}]",
                     Reason.INVALID_PROGRAM, "3 entries; exactly 4")
    self.assertFails(body + "args_list = [{'a': 1}, {'a': 2}, {'a': 3}, "
                     "{'a': 1.0}]", Reason.INVALID_PROGRAM, r"\[0\].*\[3\].*equal")
    self.assertFails(body + "args_list = [{'a': 1}, {1: 2}, {'a': 3}, {'a': 4}]",
                     Reason.INVALID_PROGRAM, "string keys")
    self.assertIsInstance(
        self.prep(body + "args_list = [{'a': 1}, {'a': 2}]", num_args=2),
        programs.Prepared)

  def test_function_length_limit(self):
    body = "def edit_image(img, a):\n    return img\n" + "#" * 1990 + "\n"
    src = body + "args_list = [{'a': 1}, {'a': 2}, {'a': 3}, {'a': 4}]\n"
    self.assertFails(src, Reason.INVALID_PROGRAM, "under 2000")
    short = programs.prepare(EveJob(src, _gradient()),
                             checks.CheckConfig(max_function_chars=5000))
    self.assertIsInstance(short, programs.Prepared)

  def test_policy_randomness_and_saving(self):
    tail = "\nargs_list = [{'a': 1}, {'a': 2}, {'a': 3}, {'a': 4}]\n"
    for src, pattern in [
        ("import random\ndef edit_image(img, a):\n    return img", "random"),
        ("from random import randint\ndef edit_image(img, a):\n    return img",
         "random"),
        ("import numpy as np\ndef edit_image(img, a):\n"
         "    return img.rotate(np.random.rand())", "random"),
        ("import os\ndef edit_image(img, a):\n    os.urandom(4)\n    return img",
         "urandom"),
        ("def edit_image(img, a):\n    img.save('x.png')\n    return img",
         "saves files"),
        ("def edit_image(img, a):\n    open('x', 'w').write('1')\n    return img",
         "writing"),
    ]:
      with self.subTest(src=src):
        self.assertFails(src + tail, Reason.FORBIDDEN, pattern)
    relaxed = checks.CheckConfig(reject_randomness=False,
                                 reject_file_saving=False)
    src = "import random\ndef edit_image(img, a):\n    img.save('x')\n" \
          "    return img" + tail
    self.assertIsInstance(self.prep(src, cfg=relaxed), programs.Prepared)
    # Reading files is not saving them.
    src = "def edit_image(img, a):\n    open('x').read()\n    return img" + tail
    self.assertIsInstance(self.prep(src), programs.Prepared)

  def test_input_image_forms(self):
    img = _gradient()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    for form in (img, Image.fromarray(img), buf.getvalue(),
                 np.dstack([img, np.full(img.shape[:2], 7, np.uint8)])):
      np.testing.assert_array_equal(programs.source_image(form, CFG), img)
    gray = programs.source_image(img[..., 0], CFG)
    self.assertEqual(gray.shape, img.shape)
    with self.assertRaisesRegex(ValueError, "EveJob.image.*not a readable"):
      programs.source_image(b"not an image", CFG)
    with self.assertRaisesRegex(ValueError, "EveJob.image.*pixels"):
      programs.source_image(_png_bomb(60000, 60000), CFG)
    with self.assertRaisesRegex(ValueError, "EveJob.image.*float"):
      programs.source_image(img.astype(np.float32), CFG)

  def test_svg_prepare(self):
    self.assertEqual(programs.prepare(SvgJob("hello"), CFG).reason,
                     Reason.NO_CODE)
    self.assertIsInstance(programs.prepare(SvgJob("<svg/>"), CFG),
                          programs.Prepared)


def _frame(header, payload=b""):
  return b"".join(bytes(b) for b in wire.encode(header, payload))


class AssembleTest(absltest.TestCase):
  """`assemble` judges raw streams: forged or broken ones never pass."""

  def setUp(self):
    super().setUp()
    self.prep = programs.prepare(EveJob(VALID, _gradient()), CFG)
    self.ok_status = programs.ProcessStatus(exit_code=0)

  def stream(self, images, end=None):
    out = b""
    for k, img in enumerate(images):
      h, w, c = img.shape
      out += _frame({"t": "image", "i": k, "h": h, "w": w, "c": c},
                    img.tobytes())
    return out + _frame(end or {"t": "done"})

  def distinct_images(self):
    return [_gradient(seed=s) for s in range(4)]

  def test_good_stream(self):
    res = programs.assemble(self.prep, self.stream(self.distinct_images()),
                            self.ok_status, CFG)
    self.assertTrue(res.ok, res.detail)
    np.testing.assert_array_equal(res.images[3], _gradient(seed=3))

  def test_wrong_count_and_bad_pixels(self):
    res = programs.assemble(self.prep, self.stream(self.distinct_images()[:3]),
                            self.ok_status, CFG)
    self.assertEqual(res.reason, Reason.INVALID_OUTPUT)
    self.assertIn("3 images", res.detail)
    imgs = self.distinct_images()
    imgs[1] = np.zeros_like(imgs[1])
    res = programs.assemble(self.prep, self.stream(imgs), self.ok_status, CFG)
    self.assertEqual(res.reason, Reason.INVALID_OUTPUT)
    self.assertIn("output 1", res.detail)

  def test_forged_and_broken_streams(self):
    good = self.stream(self.distinct_images())
    bomb = _frame({"t": "image", "i": 0, "h": 10**5, "w": 10**5, "c": 3}, b"x")
    cases = {
        "truncated": good[:-3],
        "garbage": b"\xff" * 64,
        "bomb header": bomb,
        "out of order": _frame({"t": "image", "i": 1, "h": 80, "w": 80, "c": 3},
                               b"\0" * 80 * 80 * 3),
        "payload size lie": _frame({"t": "image", "i": 0, "h": 80, "w": 80,
                                    "c": 3}, b"\0" * 10),
        "error claims ok": _frame({"t": "error", "reason": "ok",
                                   "detail": "fine"}),
        "after end": good + _frame({"t": "done"}),
    }
    for name, stream in cases.items():
      with self.subTest(name):
        res = programs.assemble(self.prep, stream, self.ok_status, CFG)
        self.assertFalse(res.ok)
        self.assertEqual(res.reason, Reason.INVALID_OUTPUT, res.detail)

  def test_exit_status_takes_precedence(self):
    good = self.stream(self.distinct_images())
    cases = [
        (programs.ProcessStatus(signal=31), Reason.FORBIDDEN),  # SIGSYS
        (programs.ProcessStatus(signal=24), Reason.TIMEOUT),    # SIGXCPU
        (programs.ProcessStatus(signal=9, cpu_limited=True), Reason.TIMEOUT),
        (programs.ProcessStatus(signal=11), Reason.CRASHED),
        (programs.ProcessStatus(exit_code=0, timed_out=True), Reason.TIMEOUT),
        (programs.ProcessStatus(exit_code=3), Reason.CRASHED),
    ]
    for status, reason in cases:
      with self.subTest(status=status):
        res = programs.assemble(self.prep, good, status, CFG)
        self.assertEqual(res.reason, reason)
    res = programs.assemble(self.prep, b"", self.ok_status, CFG)
    self.assertEqual(res.reason, Reason.CRASHED)


class WireAndSeccompTest(absltest.TestCase):

  def test_split_frames_roundtrip_and_limits(self):
    data = _frame({"a": 1}, b"xyz") + _frame({"b": 2})
    frames = wire.split_frames(data, max_frames=5)
    self.assertEqual([(h["n"], bytes(p)) for h, p in frames],
                     [(3, b"xyz"), (0, b"")])
    with self.assertRaises(wire.ProtocolError):
      wire.split_frames(data, max_frames=1)
    with self.assertRaises(wire.ProtocolError):
      wire.split_frames(struct.pack(">I", 5) + b"[1,2]", max_frames=5)
    with self.assertRaises(wire.ProtocolError):
      wire.split_frames(struct.pack(">I", 9) + b'{"n": -1}', max_frames=5)

  def test_seccomp_filter_shape(self):
    code = seccomp.build_filter("x86_64")
    self.assertEqual(len(code) % 8, 0)
    # Every jump stays inside the program (BPF jumps only go forward).
    n = len(code) // 8
    for i in range(n):
      op, jt, jf, k = struct.unpack("=HBBI", code[8 * i:8 * i + 8])
      if op == 0x05:  # BPF_JA: k is the offset
        self.assertLess(i + 1 + k, n)
      elif op & 0x07 == 0x05:  # conditional jumps
        self.assertLess(i + 1 + max(jt, jf), n)
    self.assertGreater(len(seccomp.build_filter("aarch64")), 0)
    with self.assertRaises(seccomp.SeccompUnavailable):
      seccomp.build_filter("sparc")


if __name__ == "__main__":
  absltest.main()
