#!/usr/bin/env python3
"""TenSEAL encrypted-MNIST baseline (TenSEAL tutorial "Encrypted Convolution on MNIST").

Model (exactly the tutorial's ConvNet, no torch needed: trained here in numpy):

    Conv2d(1 -> 4, kernel 7, stride 3)   28x28 -> 4 x 8x8 = 256
    x^2
    Linear(256 -> 64)
    x^2
    Linear(64 -> 10)

Plaintext training: numpy, cross-entropy, Adam(lr 1e-3), batch 64, PyTorch's default
init (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases), seed 73 as in the
tutorial, on the training subset data/mnist/train-10k-* (the tutorial uses all 60k).
Normalisation as the tutorial: (x/255 - 0.1307)/0.3081.

Encrypted inference: the tutorial's EncConvNet, verbatim in TenSEAL calls:
    context = ts.context(CKKS, 8192, coeff_mod_bit_sizes=[31, 26, 26, 26, 26, 26, 26, 31])
    context.global_scale = 2**26; context.generate_galois_keys()
    x_enc, windows_nb = ts.im2col_encoding(context, image, 7, 7, 3)
    y_c = x_enc.conv2d_im2col(kernel_c, windows_nb) + bias_c     (c = 0..3)
    x = ts.CKKSVector.pack_vectors([y_0..y_3]); x.square_()
    x = x.mm(fc1_w.T) + fc1_b; x.square_(); x = x.mm(fc2_w.T) + fc2_b
    logits = x.decrypt()
One image per ciphertext (TenSEAL's layout). Encrypt/forward/decrypt timed separately
with time.perf_counter, per image, single process.

    venv-seal/bin/python scripts/peers/tenseal_mnist.py --limit 200 --out tenseal-mnist.json
"""

import argparse
import gzip
import json
import os
import platform
import resource
import statistics
import struct
import subprocess
import sys
import time

import numpy as np
import tenseal as ts

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
MEAN, STD = 0.1307, 0.3081
K, STRIDE, OUT_CH, HID, NCLS = 7, 3, 4, 64, 10
OUT_HW = (28 - K) // STRIDE + 1          # 8
CONV_OUT = OUT_CH * OUT_HW * OUT_HW      # 256
BITS_SCALE = 26
POLY_N = 8192
COEFF_BITS = [31] + [BITS_SCALE] * 6 + [31]


# ----------------------------------------------------------------------------- data
def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    if magic == 0x803:
        n, r, c = struct.unpack(">III", data[4:16])
        return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, r, c)
    if magic == 0x801:
        n, = struct.unpack(">I", data[4:8])
        return np.frombuffer(data, dtype=np.uint8, offset=8).reshape(n)
    raise ValueError(f"{path}: bad IDX magic {magic:#x}")


def load_mnist(data_dir):
    def pair(prefix):
        x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
        y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        assert len(x) == len(y)
        return ((x.astype(np.float64) / 255.0 - MEAN) / STD), y.astype(np.int64)
    return pair("train-10k"), pair("t10k")


# ----------------------------------------------------------------------------- model (numpy)
def im2col_batch(x):
    """(B, 28, 28) -> (B, 64, 49): windows in row-major order (oh, ow), kernel row-major."""
    s = np.lib.stride_tricks.sliding_window_view(x, (K, K), axis=(1, 2))  # (B, 22, 22, 7, 7)
    s = s[:, ::STRIDE, ::STRIDE]                                          # (B, 8, 8, 7, 7)
    return s.reshape(x.shape[0], OUT_HW * OUT_HW, K * K)


def init_params(rng):
    def lin(fan_in, shape_w, n_b):
        b = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-b, b, shape_w), rng.uniform(-b, b, n_b)
    p = {}
    p["conv_w"], p["conv_b"] = lin(K * K, (OUT_CH, K * K), OUT_CH)   # torch (4,1,7,7) flattened
    p["fc1_w"], p["fc1_b"] = lin(CONV_OUT, (HID, CONV_OUT), HID)     # torch layout (out, in)
    p["fc2_w"], p["fc2_b"] = lin(HID, (NCLS, HID), NCLS)
    return p


def forward(p, cols, keep=False):
    """cols: (B, 64, 49). Returns logits (B, 10) [and cache]."""
    B = cols.shape[0]
    conv = np.einsum("bwk,ck->bcw", cols, p["conv_w"]) + p["conv_b"][None, :, None]  # (B,4,64)
    a0 = conv.reshape(B, CONV_OUT)          # torch x.view(-1, 256): channel-major
    h0 = a0 * a0
    a1 = h0 @ p["fc1_w"].T + p["fc1_b"]
    h1 = a1 * a1
    out = h1 @ p["fc2_w"].T + p["fc2_b"]
    if keep:
        return out, (cols, a0, h0, a1, h1)
    return out


def loss_grad(p, cols, y):
    out, (cols, a0, h0, a1, h1) = forward(p, cols, keep=True)
    B = out.shape[0]
    z = out - out.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    loss = -np.mean(np.log(prob[np.arange(B), y] + 1e-300))
    d_out = prob
    d_out[np.arange(B), y] -= 1.0
    d_out /= B
    g = {}
    g["fc2_w"] = d_out.T @ h1
    g["fc2_b"] = d_out.sum(0)
    d_a1 = (d_out @ p["fc2_w"]) * 2.0 * a1
    g["fc1_w"] = d_a1.T @ h0
    g["fc1_b"] = d_a1.sum(0)
    d_a0 = (d_a1 @ p["fc1_w"]) * 2.0 * a0
    d_conv = d_a0.reshape(B, OUT_CH, OUT_HW * OUT_HW)
    g["conv_w"] = np.einsum("bcw,bwk->ck", d_conv, cols)
    g["conv_b"] = d_conv.sum(axis=(0, 2))
    return loss, g


def train(xtr, ytr, epochs, batch, lr, seed, log):
    rng = np.random.default_rng(seed)
    p = init_params(rng)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    cols_all = im2col_batch(xtr)
    t = 0
    for ep in range(1, epochs + 1):
        perm = rng.permutation(len(xtr))
        tot, nb = 0.0, 0
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            loss, g = loss_grad(p, cols_all[idx], ytr[idx])
            t += 1
            for k in p:
                m[k] = b1 * m[k] + (1 - b1) * g[k]
                v[k] = b2 * v[k] + (1 - b2) * g[k] * g[k]
                mh = m[k] / (1 - b1 ** t)
                vh = v[k] / (1 - b2 ** t)
                p[k] -= lr * mh / (np.sqrt(vh) + eps)
            tot += loss
            nb += 1
        log(f"  epoch {ep}/{epochs}: train loss {tot / nb:.4f}")
    return p


# ----------------------------------------------------------------------------- encrypted model
class EncConvNet:
    """TenSEAL tutorial's EncConvNet (same calls, weights from the numpy model)."""

    def __init__(self, p):
        self.conv1_weight = p["conv_w"].reshape(OUT_CH, K, K).tolist()
        self.conv1_bias = p["conv_b"].tolist()
        self.fc1_weight = p["fc1_w"].T.tolist()
        self.fc1_bias = p["fc1_b"].tolist()
        self.fc2_weight = p["fc2_w"].T.tolist()
        self.fc2_bias = p["fc2_b"].tolist()

    def forward(self, enc_x, windows_nb):
        enc_channels = []
        for kernel, bias in zip(self.conv1_weight, self.conv1_bias):
            y = enc_x.conv2d_im2col(kernel, windows_nb) + bias
            enc_channels.append(y)
        enc_x = ts.CKKSVector.pack_vectors(enc_channels)
        enc_x.square_()
        enc_x = enc_x.mm(self.fc1_weight) + self.fc1_bias
        enc_x.square_()
        enc_x = enc_x.mm(self.fc2_weight) + self.fc2_bias
        return enc_x


# ----------------------------------------------------------------------------- misc
def machine():
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.system()} {platform.release()} {platform.machine()} | {model} | {os.cpu_count()} cpus"


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def uptime_str():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


def peak_rss_mb():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return r / 1024.0 if sys.platform != "darwin" else r / (1024.0 * 1024.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "mnist"))
    ap.add_argument("--limit", type=int, default=100, help="encrypted test images (first N)")
    ap.add_argument("--epochs", type=int, default=10, help="tutorial: 10")
    ap.add_argument("--batch", type=int, default=64, help="tutorial: 64")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam lr (tutorial: torch default 1e-3)")
    ap.add_argument("--seed", type=int, default=73, help="tutorial: torch.manual_seed(73)")
    ap.add_argument("--threads", type=int, default=None,
                    help="ts.context n_threads (default: TenSEAL's default = hardware concurrency)")
    ap.add_argument("--out", default=None, help="output JSON file")
    args = ap.parse_args()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    la_start, up_start = loadavg(), uptime_str()
    (xtr, ytr), (xte, yte) = load_mnist(args.data)
    log(f"[data] train {xtr.shape} test {xte.shape}")

    t0 = time.perf_counter()
    log(f"[train] numpy ConvNet, {args.epochs} epochs, batch {args.batch}, Adam lr {args.lr}, seed {args.seed}")
    p = train(xtr, ytr, args.epochs, args.batch, args.lr, args.seed, log)
    train_s = time.perf_counter() - t0
    logits_te = forward(p, im2col_batch(xte))
    pred_te = logits_te.argmax(1)
    plain_acc = float((pred_te == yte).mean())
    log(f"[train] {train_s:.1f}s, plaintext test accuracy {plain_acc:.4f} on {len(yte)} images")

    # ---- context / keys (tutorial parameters)
    t0 = time.perf_counter()
    ctx_kwargs = dict(poly_modulus_degree=POLY_N, coeff_mod_bit_sizes=COEFF_BITS)
    if args.threads is not None:
        ctx_kwargs["n_threads"] = args.threads
    context = ts.context(ts.SCHEME_TYPE.CKKS, **ctx_kwargs)
    context.global_scale = 2 ** BITS_SCALE
    context.generate_galois_keys()
    keygen_s = time.perf_counter() - t0
    pub_ctx_bytes = len(context.serialize(save_public_key=True, save_secret_key=False,
                                          save_galois_keys=True, save_relin_keys=True))
    log(f"[keys] {keygen_s:.2f}s; public context (pk+relin+galois) {pub_ctx_bytes / 2**20:.1f} MiB")

    enc_model = EncConvNet(p)
    n = min(args.limit, len(xte))
    t_enc, t_fwd, t_dec, t_tot, t_cpu = [], [], [], [], []
    enc_pred, errs, rel_errs = [], [], []
    enc_img_bytes = None
    windows_nb = None
    log(f"[enc] {n} images, one per ciphertext")
    t_all = time.perf_counter()
    for i in range(n):
        img = xte[i].tolist()
        cpu_a = time.process_time()
        a = time.perf_counter()
        x_enc, windows_nb = ts.im2col_encoding(context, img, K, K, STRIDE)
        b = time.perf_counter()
        y_enc = enc_model.forward(x_enc, windows_nb)
        c = time.perf_counter()
        out = np.array(y_enc.decrypt())
        d = time.perf_counter()
        t_cpu.append(time.process_time() - cpu_a)
        t_enc.append(b - a); t_fwd.append(c - b); t_dec.append(d - c); t_tot.append(d - a)
        if enc_img_bytes is None:
            enc_img_bytes = len(x_enc.serialize())
            enc_out_bytes = len(y_enc.serialize())
        enc_pred.append(int(out.argmax()))
        errs.append(float(np.max(np.abs(out - logits_te[i]))))
        rel_errs.append(errs[-1] / float(np.max(np.abs(logits_te[i]))))
        if (i + 1) % 25 == 0 or i + 1 == n:
            acc = np.mean(np.array(enc_pred) == yte[:i + 1])
            log(f"  {i + 1}/{n}: enc acc {acc:.4f}, median {statistics.median(t_tot):.3f}s/img, "
                f"max logit err {max(errs):.3g}")
    wall = time.perf_counter() - t_all
    enc_pred = np.array(enc_pred)
    la_end, up_end = loadavg(), uptime_str()

    res = {
        "engine": "tenseal",
        "version": ts.__version__,
        "machine": machine(),
        "model": "TenSEAL tutorial ConvNet: Conv2d(1,4,k7,s3) -> x^2 -> Linear(256,64) -> x^2 -> Linear(64,10)",
        "params": {"scheme": "ckks", "poly_modulus_degree": POLY_N, "coeff_mod_bit_sizes": COEFF_BITS,
                   "global_scale_bits": BITS_SCALE, "galois_keys": True,
                   "n_threads": args.threads if args.threads is not None else "tenseal default (hardware concurrency)",
                   "layout": "im2col_encoding, one image per ciphertext",
                   "windows_nb": windows_nb},
        "training": {"framework": f"numpy {np.__version__}", "train_images": int(len(ytr)),
                     "epochs": args.epochs, "batch": args.batch, "optimizer": f"Adam lr={args.lr}",
                     "seed": args.seed, "seconds": round(train_s, 2)},
        "images": n,
        "encrypted_accuracy": float((enc_pred == yte[:n]).mean()),
        "plaintext_accuracy": plain_acc,
        "plaintext_accuracy_test_images": int(len(yte)),
        "plaintext_accuracy_same_images": float((pred_te[:n] == yte[:n]).mean()),
        "argmax_agreement": float((enc_pred == pred_te[:n]).mean()),
        "max_abs_logit_error": max(errs),
        "mean_abs_logit_error_per_image_max": float(np.mean(errs)),
        "max_rel_logit_error": max(rel_errs),
        "plaintext_max_abs_logit": float(np.max(np.abs(logits_te[:n]))),
        "seconds_per_image_median": statistics.median(t_tot),
        "seconds_per_image_mean": statistics.mean(t_tot),
        "seconds_encrypt_median": statistics.median(t_enc),
        "seconds_forward_median": statistics.median(t_fwd),
        "seconds_decrypt_median": statistics.median(t_dec),
        "seconds_encrypt_mean": statistics.mean(t_enc),
        "seconds_forward_mean": statistics.mean(t_fwd),
        "seconds_decrypt_mean": statistics.mean(t_dec),
        "cpu_seconds_per_image_median": statistics.median(t_cpu),
        "images_per_second": n / wall,
        "wall_seconds_encrypted": wall,
        "peak_rss_mb": peak_rss_mb(),
        "keygen_seconds": keygen_s,
        "public_context_bytes": pub_ctx_bytes,
        "encrypted_image_bytes": enc_img_bytes,
        "encrypted_logits_bytes": enc_out_bytes,
        "cpus": os.cpu_count(),
        "loadavg_start": la_start,
        "loadavg_end": la_end,
        "uptime_start": up_start,
        "uptime_end": up_end,
        "command": " ".join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(ROOT) else sys.executable]
                            + [os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
        "notes": [
            "Per-image times: encrypt = ts.im2col_encoding (encode+encrypt), forward = EncConvNet.forward, "
            "decrypt = CKKSVector.decrypt (decrypt+decode); seconds_per_image = their sum.",
            "images_per_second = images / wall time of the whole encrypted loop (includes logging, argmax).",
            "Public context = serialize(save_secret_key=False) with public, relin and galois keys.",
            "Encrypted image size = x_enc.serialize() (CKKSVector proto, includes no context).",
            "Training in numpy (torch not installed); same architecture/optimizer/batch/epochs/seed value as "
            "the tutorial, but on the 10k training subset, so plaintext accuracy is a bit below the tutorial's.",
            "cpu_seconds_per_image = process CPU time (all threads) for encrypt+forward+decrypt; on a loaded "
            "machine wall time exceeds it.",
            "max_rel_logit_error = max over images of (max |logit err|) / (max |plaintext logit|) of that image.",
            "max_abs_logit_error = max over images and classes of |decrypted logit - float64 plaintext logit|.",
        ],
    }
    s = json.dumps(res, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(s + "\n")
    print(s)
    log("")
    log(f"TenSEAL {ts.__version__} encrypted MNIST (tutorial ConvNet, CKKS N={POLY_N}, scale 2^{BITS_SCALE}), "
        f"{n} images, n_threads={res['params']['n_threads']}")
    log(f"  plaintext acc {plain_acc:.4f} (10k test) | encrypted acc {res['encrypted_accuracy']:.4f} | "
        f"argmax agreement {res['argmax_agreement']:.4f} | max |logit err| {res['max_abs_logit_error']:.3g} "
        f"(rel {res['max_rel_logit_error']:.3g}, max |logit| {res['plaintext_max_abs_logit']:.4g})")
    log(f"  per image median {res['seconds_per_image_median']:.3f}s (enc {res['seconds_encrypt_median']:.3f} + "
        f"fwd {res['seconds_forward_median']:.3f} + dec {res['seconds_decrypt_median']:.4f}), "
        f"{res['images_per_second']:.2f} img/s, CPU {res['cpu_seconds_per_image_median']:.3f}s/img")
    log(f"  keygen {keygen_s:.2f}s | public ctx {pub_ctx_bytes / 2**20:.2f} MiB | enc image "
        f"{enc_img_bytes / 2**10:.0f} KiB | peak RSS {res['peak_rss_mb']:.0f} MiB | load {la_start} -> {la_end}")


if __name__ == "__main__":
    main()
