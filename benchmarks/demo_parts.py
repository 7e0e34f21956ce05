"""Train the demo's VQ tokenizer and digit classifier at the recommended settings and print their quality.

Usage: ``python benchmarks/demo_parts.py [--threads 2] [--vq-steps 1500] [--clf-steps 800] [--out DIR]``

Prints wall time (and process CPU time, which is less sensitive to other load on the machine), VQ
test reconstruction MSE, codebook usage, classifier test accuracy, classifier accuracy on VQ
reconstructions of the test split, and feature-space Fréchet distances (small digit classifier,
not Inception FID): full train vs test (the floor for large sets) and a 100-image train subset
(10 per class, the demo's sample count) vs test (the floor for the demo's 100 samples).
"""

from __future__ import annotations

import argparse
import time

import torch

from anyorder.data.mnist import load_mnist
from anyorder.evaluation.judge import class_accuracy, extract_features, frechet_distance
from anyorder.hub import save_pretrained
from anyorder.tokenizers.demo_vq import DemoVQConfig, codebook_usage, reconstruction_error
from anyorder.training.small_models import train_demo_vq, train_digit_classifier


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` random items of every class."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        parts.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vq-steps", type=int, default=1500)
    p.add_argument("--vq-batch", type=int, default=128)
    p.add_argument("--vq-lr", type=float, default=2e-3)
    p.add_argument("--codebook-size", type=int, default=128)
    p.add_argument("--code-dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--clf-steps", type=int, default=800)
    p.add_argument("--clf-batch", type=int, default=128)
    p.add_argument("--clf-lr", type=float, default=2e-3)
    p.add_argument("--skip-vq", action="store_true")
    p.add_argument("--out", default=None, help="optional directory to save vq/ and classifier/ into")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    progress = not args.no_progress

    t0, c0 = time.perf_counter(), time.process_time()
    train_x, train_y, test_x, test_y = load_mnist(test_fraction=0.1, seed=args.seed)
    print(f"data: train {tuple(train_x.shape)}, test {tuple(test_x.shape)} ({time.perf_counter() - t0:.1f}s)")

    t, c = time.perf_counter(), time.process_time()
    clf, clf_stats = train_digit_classifier(
        train_x, train_y, steps=args.clf_steps, batch_size=args.clf_batch, lr=args.clf_lr,
        seed=args.seed, device=args.device, progress=progress,
    )
    clf_wall, clf_cpu = time.perf_counter() - t, time.process_time() - c
    test_acc = class_accuracy(clf, test_x, test_y)
    f_train, f_test = extract_features(clf, train_x), extract_features(clf, test_x)
    fd_train_test = frechet_distance(f_train, f_test)
    fd_small = [
        frechet_distance(f_train[per_class_subset(train_y, 10, s)], f_test) for s in range(5)
    ]
    print(f"classifier: steps={args.clf_steps} batch={args.clf_batch} lr={args.clf_lr} "
          f"wall {clf_wall:.1f}s cpu {clf_cpu:.1f}s")
    print(f"  test accuracy                        {test_acc:.4f}")
    print(f"  Frechet(train 4500 vs test 500)      {fd_train_test:.3f}")
    print(f"  Frechet(train 100 = 10/class vs test) mean {sum(fd_small) / 5:.3f} "
          f"(min {min(fd_small):.3f}, max {max(fd_small):.3f}, 5 draws)")

    if not args.skip_vq:
        cfg = DemoVQConfig(codebook_size=args.codebook_size, code_dim=args.code_dim, hidden=args.hidden)
        t, c = time.perf_counter(), time.process_time()
        vq, vq_stats = train_demo_vq(
            train_x, cfg, steps=args.vq_steps, batch_size=args.vq_batch, lr=args.vq_lr,
            seed=args.seed, device=args.device, progress=progress,
        )
        vq_wall, vq_cpu = time.perf_counter() - t, time.process_time() - c
        recon = vq.decode(vq.encode(test_x.to(args.device))).cpu()
        print(f"VQ: {cfg}")
        print(f"  steps={args.vq_steps} batch={args.vq_batch} lr={args.vq_lr} wall {vq_wall:.1f}s cpu {vq_cpu:.1f}s")
        print(f"  test reconstruction MSE              {reconstruction_error(vq, test_x):.5f}")
        print(f"  codebook usage train / test          {vq_stats['codebook_usage']:.3f} / "
              f"{codebook_usage(vq, test_x):.3f}")
        print(f"  classifier accuracy on recon(test)   {class_accuracy(clf, recon, test_y):.4f}")
        print(f"  Frechet(recon(test) vs test)         {frechet_distance(extract_features(clf, recon), f_test):.3f}")
        if args.out:
            save_pretrained(vq, f"{args.out}/vq")
    if args.out:
        save_pretrained(clf, f"{args.out}/classifier")
    print(f"total wall {time.perf_counter() - t0:.1f}s, cpu {time.process_time() - c0:.1f}s")


if __name__ == "__main__":
    main()
