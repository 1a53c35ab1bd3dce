"""Where balancing helps and where it does not: `mmdeploy compare` on synthetic sets whose audio cue is
weaker, as generated, or stronger than the video cue (`mmdeploy data synth --audio-snr-db`).

    python benchmarks/imbalance_sweep.py                     # -6, 0, +6 dB x 4 methods x 5 seeds, 10 epochs
    python benchmarks/imbalance_sweep.py --strengths 0 --seeds 3 --set train.epochs=4   # smaller

Each strength is one compare folder (OUT/snr{X}/: the runs, compare.{csv,json,md,png}), so an interrupted
sweep resumes like compare does. Prints one Markdown table: fused test accuracy mean ± std per method and
strength, with the paired t-test p-value against the first method (* p < 0.05).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="training/recipes/synth-compare.yaml")
    parser.add_argument("--strengths", nargs="+", type=float, default=[-6.0, 0.0, 6.0],
                        help="dB added to the audio SNR (+: audio cue stronger, more imbalance)")
    parser.add_argument("--label-noise", type=float, default=0.0, help="fraction of train labels replaced")
    parser.add_argument("--methods", default="joint,mlb,mcr,ensemble")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--clips", type=int, default=480)
    parser.add_argument("--set", dest="sets", action="append", default=None, help="recipe override key=value")
    parser.add_argument("--out", type=Path, default=Path("runs/imbalance-sweep"))
    args = parser.parse_args()
    sets = args.sets if args.sets is not None else ["train.epochs=10"]

    from mmdeploy.compare import compare
    from mmdeploy.data.synth import generate

    results = {}
    for snr in args.strengths:
        tag = f"snr{snr:+g}" + (f"-noise{args.label_noise:g}" if args.label_noise else "")
        data = args.out / "data" / tag
        if not (data / "manifest.csv").is_file():
            print(f"generating {args.clips} clips, audio SNR {snr:+g} dB, label noise {args.label_noise:g} -> {data}",
                  flush=True)
            generate(data, clips=args.clips, seed=0, classes=8, audio_snr_db=snr, label_noise=args.label_noise)
        overrides = [*sets, f"data.manifest={(data / 'manifest.csv').resolve()}", "data.synth=null",
                     f"data.cache={(data / 'cache').resolve()}"]
        results[snr] = compare(args.recipe, args.methods, args.seeds, args.out / tag, args.jobs, overrides,
                               say=lambda line: print(line, flush=True),
                               command=f"python benchmarks/imbalance_sweep.py (audio SNR {snr:+g} dB)")

    first = next(iter(results.values()))
    methods, ref = first["methods"], first["reference"]
    print(f"\nfused test accuracy %, mean ± std over {args.seeds} seeds; paired t p vs {ref} (* < 0.05); "
          f"recipe {args.recipe} {sets}; {first['machine']}\n")
    print("| method | " + " | ".join(f"audio SNR {s:+g} dB" for s in results) + " |")
    print("|---|" + "---|" * len(results))
    for m in methods:
        cells = []
        for r in results.values():
            f = r["summary"][m]["fused_acc"]
            vs = f.get("vs_reference")
            p = "" if vs is None else f" (p {vs['p_t']:.3f}{' *' if vs['p_t'] < 0.05 else ''})"
            cells.append(f"{100 * f['mean']:.1f} ± {100 * f['std']:.1f}{p}")
        print(f"| {m} | " + " | ".join(cells) + " |")
    print("| video head, joint | " + " | ".join(
        f"{100 * r['summary'][ref]['video_acc']['mean']:.1f}" for r in results.values()) + " |")


if __name__ == "__main__":
    main()
