"""NeMo's own FastConformer encoder, timed as bench/asr.py times minivox's (run with NeMo's Python).

    /path/to/nemo-venv/bin/python bench/nemo_peer.py --sizes 176x8,176x16,256x8 [--train-threads 2] [--repeats 3]

Prints one JSON line per size: {"d_model", "n_layers", "params", "step", "offline"} (seconds) from
bench/encoder_timing.py, the same timing bench/asr.py gives minivox's encoder. The encoder is
NeMo's streaming FastConformer setup (8x dw_striding causal subsampling, rel-pos attention,
chunked_limited context [70, 1], causal depthwise conv kernel 9 with LayerNorm, xscaling), as
minivox.conformer.ConformerConfig's defaults mirror it. bench/asr.py --peer-nemo runs
this script; it imports nothing from minivox (NeMo's environment need not have it).
"""

from __future__ import annotations

import argparse
import json

import torch
from encoder_timing import time_encoder  # bench/: this script's folder is on sys.path


def nemo_encoder(d_model: int, n_layers: int):
    from nemo.collections.asr.modules import ConformerEncoder

    return ConformerEncoder(
        feat_in=80, n_layers=n_layers, d_model=d_model, n_heads=4, ff_expansion_factor=4,
        subsampling="dw_striding", subsampling_factor=8, subsampling_conv_channels=-1, causal_downsampling=True,
        self_attention_model="rel_pos", att_context_size=[70, 1], att_context_style="chunked_limited",
        conv_kernel_size=9, conv_norm_type="layer_norm", conv_context_size="causal", xscaling=True,
        dropout=0.1, dropout_pre_encoder=0.1, dropout_emb=0.0, dropout_att=0.1,
    )


def bench(d_model: int, n_layers: int, train_threads: int, repeats: int) -> dict:
    torch.manual_seed(0)
    timing = time_encoder(nemo_encoder(d_model, n_layers),
                          lambda enc, feats, lengths: enc(audio_signal=feats, length=lengths)[0], train_threads, repeats)
    return {"d_model": d_model, "n_layers": n_layers, **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="176x8,176x16,256x8", help="d_model x layers, comma-separated")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for size in args.sizes.split(","):
        d_model, n_layers = (int(v) for v in size.split("x"))
        print(json.dumps(bench(d_model, n_layers, args.train_threads, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
