"""From the contenders' raw results to figures: equality check, metrics, table, chart."""

from __future__ import annotations

import os
import statistics

import numpy as np

#: Equality tolerance on logits, relative to the largest reference logit (fp32 paths).
FP32_TOLERANCE = 1e-4
#: With bf16/fp16 autocast logits differ more; the check is then top-1 agreement.
LOW_PRECISION_TOP1 = 0.98


def load_logits(work_dir: str, name: str = "logits.npz"):
    path = os.path.join(work_dir, name)
    if not os.path.exists(path):
        return None
    data = np.load(path)
    return [str(p) for p in data["paths"]], data["logits"]


def check_equal(reference, candidate, precision: str) -> dict:
    """Same rows, and logits within tolerance (fp32) or the same top-1 (bf16/fp16)."""
    ref_paths, ref_logits = reference
    paths, logits = candidate
    if paths != ref_paths:
        missing = sorted(set(ref_paths) - set(paths))[:3]
        extra = len(paths) - len(set(paths))
        return {"equal": False, "reason": f"rows differ: {len(paths)} vs {len(ref_paths)} "
                                          f"(missing e.g. {missing}, {extra} duplicated)"}
    diff = float(np.abs(logits - ref_logits).max()) if len(paths) else 0.0
    scale = max(1.0, float(np.abs(ref_logits).max()))
    top1 = float((logits.argmax(1) == ref_logits.argmax(1)).mean()) if len(paths) else 1.0
    if precision == "fp32":
        equal = diff <= FP32_TOLERANCE * scale
        reason = f"max |diff| {diff:.2e} vs tolerance {FP32_TOLERANCE * scale:.2e}"
    else:
        equal = top1 >= LOW_PRECISION_TOP1
        reason = f"top-1 agreement {top1:.3f} (max |diff| {diff:.2e})"
    return {"equal": bool(equal), "max_abs_diff": diff, "top1_agreement": top1,
            "reason": reason}


def _job(result: dict, label: str) -> dict | None:
    return next((j for j in result.get("jobs", []) if j["label"] == label), None)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def best_ceilings(ceiling: dict) -> dict:
    """optimisation -> the fastest tight loop measured for it (any thread layout)."""
    best: dict = {}
    for label, figures in ceiling.get("model", {}).items():
        optimize = figures.get("optimize", label)
        best[optimize] = max(best.get(optimize, 0.0), figures["images_per_s"])
    return best


def mode_rows(results: dict, config: dict) -> list[dict]:
    """One row per measured mode: throughput, ratios, first result, overhead, memory."""
    ceilings = best_ceilings(results.get("ceiling", {}))
    rows_main = config["images"]
    small_rows = config["small_rows"]
    rows = []
    for name, result in results.items():
        if name == "ceiling" or "jobs" not in result:
            continue
        main = _job(result, "main")
        small = _job(result, "small")
        variants = [("cold", main["runs"][0]), ("warm", main["runs"][1])] \
            if "pool_load_s" in result and len(main["runs"]) > 1 else [("", main["runs"][-1])]
        small_wall = _median([r["wall_s"] for r in small["runs"]]) if small else None
        for suffix, run in variants:
            label = f"{name} {suffix}".strip()
            throughput = rows_main / run["wall_s"]
            optimize = result.get("optimize", "none")
            own_ceiling = ceilings.get(optimize) or ceilings.get("none")
            row = {"mode": label, "images_per_s": round(throughput, 2),
                   "wall_s": run["wall_s"], "first_result_s": run["first_result_s"],
                   "model_loads": run["model_loads"], "optimize": optimize,
                   "ratio_to_ceiling": round(throughput / own_ceiling, 3) if own_ceiling else None,
                   "ceiling_used": optimize if optimize in ceilings else "none",
                   "small_job_s": (round(small_wall, 3) if small_wall and suffix != "cold"
                                   else None),
                   "load_average": result.get("load_average"),
                   **result.get("memory", {})}
            if small_wall and suffix != "cold":
                # steady throughput: marginal rate between the small and the main job
                extra_s = run["wall_s"] - small_wall
                steady = (rows_main - small_rows) / extra_s if extra_s > 0 else None
                row["steady_images_per_s"] = round(steady, 2) if steady else None
                row["fixed_overhead_s"] = (round(small_wall - small_rows / steady, 3)
                                           if steady else None)
                compute = ceilings.get(optimize) or ceilings.get("none")
                row["small_job_overhead_vs_ceiling_s"] = (
                    round(small_wall - small_rows / compute, 3) if compute else None)
            if "optimize_s" in result and suffix == "cold":
                row["optimize_cost_s"] = result["optimize_s"]
            rows.append(row)
    for baseline, key in (("udf", "ratio_to_udf"),
                          ("predict_batch_udf", "ratio_to_predict_batch_udf")):
        base = next((r for r in rows if r["mode"] == baseline), None)
        for row in rows:
            row[key] = round(row["images_per_s"] / base["images_per_s"], 3) if base else None
    return rows


def tuning_line(config: dict) -> str:
    """What the contenders were tuned with: each on its defaults, or one tuning for all."""
    tuned = {name: config.get(name) for name in ("threads", "actors")
             if config.get(name) is not None}
    tuned.update({name: config.get(name) for name in config.get("tuned_forward", [])})
    forward = ("" if {"precision", "channels_last"} <= set(tuned) else
               " Forward pass: the engine's modes and the ceiling use the device's defaults "
               f"(here {config.get('precision')}"
               + (", channels_last" if config.get("channels_last") else "")
               + "); predict_batch_udf and ray_data run the plain module as their docs "
                 "do (fp32, contiguous) unless --precision/--channels-last are given.")
    if not tuned:
        return ("Tuning: none. Every contender runs on its own defaults (predict_batch_udf "
                "and udf: torch's threads in each Spark worker; hybrid: the pool's sizing "
                "rule, a CPU pool on its node's cores); the ceiling uses every core."
                + forward)
    return ("Tuning, given to every contender alike: "
            + ", ".join(f"{name}={value}" for name, value in tuned.items())
            + " (hybrid and Ray Data: threads split between actors; predict_batch_udf "
              "and udf: threads split across Spark task slots)." + forward)


def sweep_curves(results: dict, config: dict) -> dict:
    """mode -> {"size": [(rows, images/s)], "partitions": [(partitions, images/s)]}."""
    curves = {}
    for name, result in results.items():
        if "jobs" not in result:
            continue
        main = _job(result, "main")
        main_run = main["runs"][-1]
        size = [(config["images"], config["images"] / main_run["wall_s"])]
        parts = [(config["partitions"], config["images"] / main_run["wall_s"])]
        for job in result["jobs"]:
            wall = _median([r["wall_s"] for r in job["runs"]])
            if job["label"].startswith("size-"):
                size.append((job["rows"], job["rows"] / wall))
            elif job["label"].startswith("parts-"):
                parts.append((job["partitions"], job["rows"] / wall))
        curves[name] = {"size": sorted(size), "partitions": sorted(parts)}
    return curves


def markdown_table(rows: list[dict], ceiling: dict, config: dict) -> str:
    header = ("| mode | images/s | x ceiling | x udf | x predict_batch_udf | first result s "
              "| small job s | fixed overhead s (marginal) | fixed overhead s (vs ceiling) "
              "| peak PSS MiB | peak RSS MiB | model loads | load avg |")
    lines = [tuning_line(config), "", header, "|" + "---|" * 13]

    def fmt(value, pattern="{:.2f}"):
        return "-" if value is None else pattern.format(value)

    for row in rows:
        lines.append(
            f"| {row['mode']}{' (' + row['optimize'] + ')' if row['optimize'] != 'none' else ''} "
            f"| {fmt(row['images_per_s'], '{:.1f}')} | {fmt(row['ratio_to_ceiling'])} "
            f"| {fmt(row['ratio_to_udf'])} | {fmt(row.get('ratio_to_predict_batch_udf'))} "
            f"| {fmt(row['first_result_s'])} "
            f"| {fmt(row.get('small_job_s'))} | {fmt(row.get('fixed_overhead_s'))} "
            f"| {fmt(row.get('small_job_overhead_vs_ceiling_s'))} "
            f"| {fmt(row.get('peak_pss_mib'), '{:.0f}')} | {fmt(row.get('peak_rss_mib'), '{:.0f}')} "
            f"| {fmt(row['model_loads'], '{}')} "
            f"| {'-' if not row.get('load_average') else '%.0f-%.0f' % tuple(row['load_average'])} |")
    for variant, figures in ceiling.get("model", {}).items():
        lines.append(f"| ceiling: model only ({variant}) | {figures['images_per_s']:.1f} | 1.00 "
                     f"| - | - | - | - | - | - | - | - | 1 | - |")
    for key, value in ceiling.items():
        if key.startswith("decode_images_per_s"):
            threads = key.rsplit("_", 2)[-2]
            lines.append(f"| decode only ({threads} thread{'s' if threads != '1' else ''}) "
                         f"| {value:.1f} | - | - | - | - | - | - | - | - | - | - | - |")
    return "\n".join(lines)


def chart(rows: list[dict], curves: dict, path: str, title: str,
          ceilings: dict | None = None) -> None:
    """ceilings: variant -> model-only images/s, drawn as lines on the throughput bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    names = [r["mode"] for r in rows]
    axes[0].barh(names, [r["images_per_s"] for r in rows], color="tab:blue")
    axes[0].invert_yaxis()
    for variant, rate in (ceilings or {}).items():
        axes[0].axvline(rate, linestyle="--", color="grey" if variant == "none" else "black",
                        label=f"ceiling ({variant})")
    if ceilings:
        axes[0].legend(fontsize=8)
    axes[0].set_xlabel("images/s (end to end)")
    axes[0].set_title("throughput, main job")
    for name, curve in curves.items():
        if len(curve["size"]) > 1:
            axes[1].plot(*zip(*curve["size"]), marker="o", label=name)
        if len(curve["partitions"]) > 1:
            axes[2].plot(*zip(*curve["partitions"]), marker="o", label=name)
    axes[1].set_xscale("log", base=2)
    axes[1].set_xlabel("images per job")
    axes[1].set_ylabel("images/s")
    axes[1].set_title("dataset size sweep")
    axes[2].set_xscale("log", base=2)
    axes[2].set_xlabel("Spark partitions (same images)")
    axes[2].set_ylabel("images/s")
    axes[2].set_title("partition count sweep")
    for axis in axes[1:]:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
