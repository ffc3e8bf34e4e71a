"""Images/s and captions/s of `lsr-os encode` for the BLIP-base architecture (ViT-B/16 at 384 px,
random weights at real size, nothing downloaded), end to end from JPEG files on disk.

Baseline, measured in the same run: the naive loop a user would write first: one image at a
time through transformers' processor and the model (eager attention, no batching, no
workers), one caption at a time. Usage:

    python bench/encode_throughput.py                      # CPU: short (16 images, ~1.8 s each)
    python bench/encode_throughput.py --device cuda --images 8192 --captions 40960 \
        --batch-size 512 --workers 14 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import md_table, write_results  # noqa: E402


# A BLIP small enough for CPU tests of the benchmarks (same architecture, 256-d ITC output)
TINY_BLIP = {"image_size": 64,
             "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                      "max_position_embeddings": 64, "encoder_hidden_size": 32},
             "vision": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 64, "patch_size": 16}}


def build_blip_base(folder: Path, tiny: bool = False, vocab: str | Path | None = None) -> Path:
    """A blip-itm-base-coco-shaped checkpoint folder with random weights (BlipConfig defaults);
    `tiny`: the same architecture at TINY_BLIP's sizes, for CPU runs of the benchmarks; `vocab`:
    a BERT-uncased tokenizer folder [default: the offline MiniLM package's]."""
    import transformers
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipProcessor

    from lsr_os.vocab import load_tokenizer

    # transformers >= 5.x names the PIL image processor BlipImageProcessorPil; older ones BlipImageProcessor
    processor_cls = getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor
    torch.manual_seed(0)
    if tiny:
        size = TINY_BLIP["image_size"]
        config = BlipConfig(text_config={"vocab_size": 30524, **TINY_BLIP["text"]},
                            vision_config={"image_size": size, **TINY_BLIP["vision"]})
        image_processor = processor_cls(size={"height": size, "width": size})
    else:
        config = BlipConfig(text_config={"vocab_size": 30524})
        image_processor = processor_cls()
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    tokenizer = load_tokenizer(str(vocab) if vocab else None)
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def make_collection(root: Path, n_images: int, n_captions: int) -> Path:
    """COCO-like JPEGs (640 x 480, quality 90) and captions of 8 to 16 words."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    words = "a man woman dog cat sits on the red bench near street with two people and tree".split()
    rows = []
    for i in range(n_images):
        Image.fromarray(np.roll(base, i * 7, axis=1)).save(root / "img" / f"{i}.jpg", quality=90)
    for j in range(n_captions):
        rows.append({"image": f"img/{j % n_images}.jpg",
                     "caption": " ".join(rng.choice(words, size=int(rng.integers(8, 17))))})
    path = root / "captions.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def naive_images(model, processor, paths: list[Path], device: torch.device) -> float:
    from lsr_os.data import load_image

    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            pixels = processor(images=load_image(p), return_tensors="pt")["pixel_values"].to(device)
            feats = model.vision_proj(model.vision_model(pixel_values=pixels).last_hidden_state[:, 0])
            torch.nn.functional.normalize(feats, dim=-1).cpu()
    return time.perf_counter() - t0


def naive_captions(model, processor, texts: list[str], device: torch.device) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for t in texts:
            tok = processor.tokenizer([t], truncation=True, max_length=35, return_tensors="pt").to(device)
            out = model.text_encoder(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            torch.nn.functional.normalize(model.text_proj(out.last_hidden_state[:, 0]), dim=-1).cpu()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32, bfloat16, float16 [default: per device]")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--captions", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--text-batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--baseline-images", type=int, default=None, help="[default: same as --images, at most 256]")
    ap.add_argument("--name", default=None, help="results name [default: encode_throughput_<device>]")
    args = ap.parse_args()

    from lsr_os.data import load_dataset
    from lsr_os.encode import EncodeOptions, encode_dataset
    from lsr_os.models import load_encoder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        model_dir = build_blip_base(tmp / "blip-base-random")
        captions = make_collection(tmp / "data", args.images, args.captions)
        setup_s = time.perf_counter() - t0
        enc = load_encoder(str(model_dir), device=args.device, dtype=args.dtype)
        dataset = load_dataset(captions=captions)
        enc.encode_images([Image.new("RGB", (640, 480))] * 2, batch_size=2)  # warm-up (allocations, kernels)

        opts = dict(batch_size=args.batch_size, text_batch_size=args.text_batch_size, workers=args.workers,
                    progress=False)
        img = encode_dataset(enc, dataset, tmp / "out", EncodeOptions(captions=False, **opts))
        txt = encode_dataset(enc, dataset, tmp / "out", EncodeOptions(images=False, **opts))

        n_base = args.baseline_images or min(args.images, 256)
        base_img_s = naive_images(enc.model if not enc.sdpa else _eager(model_dir, enc.device),
                                  enc.processor, [tmp / "data" / "img" / f"{i}.jpg" for i in range(n_base)],
                                  enc.device)
        base_txt = [c.text for c in dataset.captions[: min(len(dataset.captions), 1024)]]
        base_txt_s = naive_captions(enc.model, enc.processor, base_txt, enc.device)

    rows = [
        {"path": "lsr-os encode", "images_per_s": img.images.encoded / img.seconds,
         "captions_per_s": txt.captions.encoded / txt.seconds, "batch": args.batch_size,
         "dtype": str(enc.dtype).replace("torch.", ""), "attention": "sdpa (vision)" if enc.sdpa else "eager",
         "decoder": f"PIL in {args.workers} DataLoader workers" if args.workers else "PIL in the main process"},
        {"path": "naive loop (baseline)", "images_per_s": n_base / base_img_s,
         "captions_per_s": len(base_txt) / base_txt_s, "batch": 1, "dtype": "float32", "attention": "eager",
         "decoder": "PIL in the main process"},
    ]
    results = {"device": str(enc.device), "images": args.images, "captions": args.captions, "rows": rows,
               "speedup_images": rows[0]["images_per_s"] / rows[1]["images_per_s"],
               "speedup_captions": rows[0]["captions_per_s"] / rows[1]["captions_per_s"],
               "setup_s": setup_s, "model": "BLIP-base ITM architecture (BlipConfig defaults), random weights",
               "image_size": enc.image_preprocessor().height}
    summary = (f"BLIP-base (ViT-B/16, {results['image_size']} px, random weights) on `{enc.device}`, "
               f"{args.images} JPEGs (640x480) and {args.captions} captions, end to end from disk.\n\n"
               + md_table(rows, ["path", "images_per_s", "captions_per_s", "batch", "dtype", "attention", "decoder"])
               + f"\n\nSpeed-up over the naive loop: images x{results['speedup_images']:.2f}, "
               f"captions x{results['speedup_captions']:.2f}.")
    path = write_results(args.name or f"encode_throughput_{enc.device.type}", results, summary)
    print(summary)
    print(f"\nresults: {path}")


def _eager(model_dir: Path, device: torch.device):
    """The model without the SDPA swap, as transformers ships it (the baseline's attention)."""
    from transformers import BlipForImageTextRetrieval

    return BlipForImageTextRetrieval.from_pretrained(str(model_dir)).eval().to(device)


if __name__ == "__main__":
    main()
