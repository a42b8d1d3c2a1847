# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The GC's invertible latent space: prototypes, counterfactuals, a 2-D view and the evidence per dim
#
# A GC maps an image to a latent z = f(x) with an invertible network and models z as a unit-variance
# Gaussian per class. Anything done to z can therefore be decoded and looked at. The class decision depends
# on z only through its projection onto the span of the class means (9 of 784 dims for Fashion-MNIST,
# `gclib.latent.class_subspace`); everything here moves or measures that part and keeps the rest.
# This notebook writes `fig_prototypes`, `fig_counterfactuals`, `fig_latent_space`, `fig_evidence`,
# `table_latent` and `table_counterfactuals` and glues the numbers the book cites. Examples are chosen
# by rule: the first `n_examples` correctly classified and the first `n_examples` misclassified images
# of the seeded test subset. Decoded images are clamped to [0, 1] for display; how much was cut off is
# reported.

# %% tags=["parameters"]
dataset = "fashion-mnist"
betas = "1,8,32,inf"  # the shipped GCs of the table and the 2-D view
proto_betas = "1,8,32"  # a low, a middle and a high beta for the prototypes (inf has no usable density)
example_beta = "8"  # the GC whose counterfactuals and evidence the examples show
dc = "resnet"  # the feed-forward classifier that judges the counterfactuals
temperatures = "0.5,0.8,1.0"  # sampling temperatures of the prototypes
n_samples = 2  # samples per class and temperature
n_test = 1000  # test images for the statistics and the 2-D view
n_ood = 100  # images per out-of-distribution set in the 2-D view
n_examples = 3  # correct and misclassified examples each
steps = "0,0.25,0.5,0.75,1"  # fractions of the way to the runner-up mean that are decoded
margin = 1.0  # nats by which the new class must lead at the counterfactual
n_top_dims = 3  # evidence dims decoded per example
seed = 0
device = None  # None: CUDA if available, else CPU
figures = "figures"  # output folder for figures and tables

# %%
import math
from pathlib import Path

from IPython.display import Markdown, display
from myst_nb import glue

import gclib
from gclib import latent, plotting

_, _, test = gclib.data.load(dataset)
x_test, y_test = test.subset(min(n_test, len(test)), seed).tensors()
shape = tuple(x_test.shape[1:])
class_names = list(test.classes)
beta_list = [b.strip() for b in betas.split(",") if b.strip()]
proto_list = [b.strip() for b in proto_betas.split(",") if b.strip()]
temps = [float(t) for t in temperatures.split(",")]
step_list = [float(s) for s in steps.split(",")]
ood = {name: gclib.data.ood(name, n_ood, shape, seed) for name in gclib.data.ood_names()}
feedforward = gclib.pretrained(dataset, dc, device=device)


# A model is named by its beta (the small zoo: "8" is gc-beta-8) or by its zoo name ("gc-large-beta-8").
def split(spec):  # -> (variant, beta): ("", "8") or ("large", "8")
    if "-" not in spec:
        return "", spec
    stem, _, beta = spec.rpartition("beta-")
    return stem.removeprefix("gc-").rstrip("-"), beta


def name_of(spec):
    kind, beta = split(spec)
    return f"GC{'-' + kind if kind else ''} β={'∞' if beta == 'inf' else beta}"


def key(spec):
    kind, beta = split(spec)
    return f"{kind + '_' if kind else ''}beta_{beta}"


# every GC the figures need: the small zoo first, then each variant, in the order of beta
beta_list = sorted(set(beta_list + proto_list + [example_beta]), key=lambda b: (split(b)[0], float(split(b)[1])))
models = {b: gclib.pretrained(dataset, b, device=device) for b in beta_list}
spaces = {b: latent.class_subspace(m) for b, m in models.items()}
z_test = {b: latent.latents(m, x_test) for b, m in models.items()}
print(f"{len(x_test)} test images, {len(ood)} OoD sets of {n_ood}; class-carrying dims per model: "
      + ", ".join(f"{name_of(b)}: {s.n_dims}" for b, s in spaces.items()))
glue("n_test", len(x_test), display=False)
glue("n_ood", n_ood, display=False)
glue("n_class_dims", spaces[example_beta].n_dims, display=False)
glue("n_dims", models[example_beta].n_dims, display=False)
glue("margin", f"{margin:g}", display=False)

# %% [markdown]
# ## How the latents fit the model, the per-dim evidence and the prototypes, for every GC
# Prototypes: decoded class means, the decoded centroid of each class's test latents, and samples
# mu_y + T eps (the same eps at every temperature and for every model).

# %%
fits, evid, protos, ranges, lat_rows = {}, {}, {}, {}, []
for b in beta_list:
    m, space, z = models[b], spaces[b], z_test[b]
    fits[b] = latent.class_fit(space, z, y_test)
    source, runner_up = latent.top_two(latent.class_scores(space, z))
    evid[b] = latent.evidence_summary(latent.evidence(space, z, source, runner_up), m.head.n_fc_dims)
    protos[b] = latent.prototypes(m, temps, n_samples, seed)
    protos[b]["centroids"] = latent.decode(m, fits[b]["centroids"])
    ranges[b] = {"means": latent.out_of_range(protos[b]["means"]),
                 "samples": latent.out_of_range(protos[b]["samples"][temps.index(max(temps))])}
    lat_rows.append(latent.latent_row(name_of(b), y_test, source, fits[b], evid[b], ranges[b]))
    for k in ("accuracy_pct", "rms_class", "centroid_scale", "rms_rest", "evidence_fc_pct", "evidence_half_dims",
              "means_outside_pct", "samples_outside_pct"):
        glue(f"{key(b)}_{k}", lat_rows[-1][k], display=False)
    glue(f"{key(b)}_evidence_top1_pct", f"{100 * float(evid[b]['cumulative'][:, 0].median()):.0f}", display=False)
    glue(f"{key(b)}_means_max_excess", f"{ranges[b]['means']['max_excess']:.2g}", display=False)
    glue(f"{key(b)}_means_max", f"{float(protos[b]['means'].max()):.3g}", display=False)
    for t, x_t in zip(temps, protos[b]["samples"]):
        glue(f"{key(b)}_T{t:g}_outside_pct".replace(".", "_"), f"{100 * latent.out_of_range(x_t)['fraction']:.0f}",
             display=False)
plotting.save_table(lat_rows, "table_latent", figures, headers=latent.LATENT_HEADERS)
display(Markdown((Path(figures) / "table_latent.md").read_text()))
glue("fc_dims", models[example_beta].head.n_fc_dims, display=False)
glue("temperatures", ", ".join(f"{t:g}" for t in temps), display=False)

shown_list = [b for b in beta_list if b in proto_list]  # the small zoo in the first row, each variant below
variants = list(dict.fromkeys(split(b)[0] for b in shown_list))
shown = {name_of(b).removeprefix("GC").lstrip(" -"): {**protos[b]} for b in shown_list}
fig = latent.plot_prototypes(shown, class_names, rows=[variants.index(split(b)[0]) for b in shown_list])
plotting.savefig(fig, "fig_prototypes", figures)

# %% [markdown]
# ## Counterfactuals toward the runner-up class, for every GC

# %%
stats, cf_rows = {}, []
for b in beta_list:
    stats[b] = latent.counterfactual_stats(models[b], x_test, z_test[b], feedforward, margin, spaces[b])
    cf_rows.append(latent.counterfactual_row(name_of(b), stats[b]))
    for k in ("t_flip_median", "cf_dx", "cf_kept_8bit_pct", "outside_pct", "target_raw_pct", "target_8bit_pct",
              "target_dc_pct"):
        glue(f"{key(b)}_{k}", cf_rows[-1][k], display=False)
plotting.save_table(cf_rows, "table_counterfactuals", figures, headers=latent.COUNTERFACTUAL_HEADERS)
display(Markdown((Path(figures) / "table_counterfactuals.md").read_text()))

# %% [markdown]
# ## The examples: counterfactual paths of one GC

# %%
gc, space = models[example_beta], spaces[example_beta]
picked = latent.pick_examples(stats[example_beta]["source"], y_test, n_examples)
index = picked["correct"] + picked["misclassified"]
kinds = ["correct"] * len(picked["correct"]) + ["misclassified"] * len(picked["misclassified"])
cf = latent.counterfactuals(gc, z_test[example_beta][index], step_list, margin=margin, space=space)
step0_error = float((cf["images"][:, 0] - x_test[index]).abs().max())
assert step0_error < 1e-4, step0_error
examples = [{"label": int(y_test[i]), "kind": kind} for i, kind in zip(index, kinds)]
fig = latent.plot_counterfactuals(cf, examples, class_names,
                                  title=f"{name_of(example_beta)}: moved toward the runner-up class "
                                        f"(test images {', '.join(map(str, index))} of the seeded subset)")
plotting.savefig(fig, "fig_counterfactuals", figures)
glue("example_beta", example_beta, display=False)
glue("steps", ", ".join(f"{t:g}" for t in step_list), display=False)
glue("n_examples", n_examples, display=False)
glue("cf_step0_error", f"{step0_error:.1e}", display=False)
s_ex = stats[example_beta]
for i, kind in zip(index, kinds):
    print(f"test image {i} ({kind}): true {class_names[y_test[i]]}, GC {class_names[s_ex['source'][i]]}, "
          f"runner-up {class_names[s_ex['target'][i]]}, t_flip {float(s_ex['t_flip'][i]):.2f}")

# %% [markdown]
# ## The evidence of the same examples, split over the latent dims

# %%
z_ex = z_test[example_beta][index]
a, b = cf["source"], cf["target"]
e = latent.evidence(space, z_ex, a, b)
top = e.abs().argsort(1, descending=True)[:, :n_top_dims]
changed = latent.neutralize_dims(gc, space, z_ex, a, b, top)
x_ex = latent.decode(gc, z_ex)  # the input, decoded: the same reference the changes are taken from
ev_rows = [{"image": x_test[i], "evidence": e[j], "a": a[j], "b": b[j], "dims": top[j], "kind": kinds[j],
            "changes": latent.to_8bit(changed[j]) - latent.to_8bit(x_ex[j])[None]} for j, i in enumerate(index)]
curves = {name_of(bb): evid[bb]["cumulative"].median(0).values for bb in beta_list}
shares = {name_of(bb): evid[bb]["fc_share"] for bb in beta_list}
fig = latent.plot_evidence(ev_rows, latent.dim_labels(gc), curves, shares, gc.head.n_fc_dims,
                           class_names=class_names)
plotting.savefig(fig, "fig_evidence", figures)
llr = e.sum(1)
glue("n_top_dims", n_top_dims, display=False)
glue("evidence_llr_min", f"{float(llr.min()):.2f}", display=False)
glue("evidence_llr_max", f"{float(llr.max()):.2f}", display=False)

# %% [markdown]
# ## The 2-D view of the class-carrying dims, per β, with OoD points

# %%
views = {}
for bb in beta_list:
    m = models[bb]
    others = {name: latent.latents(m, x) for name, x in ood.items()}
    views[name_of(bb)] = latent.latent_view(spaces[bb], z_test[bb], others)
    glue(f"view_{key(bb)}_explained_pct", f"{100 * views[name_of(bb)]['explained']:.0f}", display=False)
    # how far the OoD sets lie from the nearest class mean in the class-carrying dims, against the test images
    dist = {name: latent.nearest_mean_distance(spaces[bb], z) for name, z in {"test": z_test[bb], **others}.items()}
    med = {name: float(d.median()) for name, d in dist.items()}
    for name, v in med.items():
        glue(f"view_{key(bb)}_dist_{name.replace('-', '_')}", f"{v:.1f}", display=False)
    glue(f"view_{key(bb)}_dist_ood_min", f"{min(v for n, v in med.items() if n != 'test'):.1f}", display=False)
    glue(f"view_{key(bb)}_dist_ood_max", f"{max(v for n, v in med.items() if n != 'test'):.1f}", display=False)
    print(f"{name_of(bb)}: median distance from the nearest class mean (class dims): "
          + ", ".join(f"{n} {v:.1f}" for n, v in med.items()))
fig = latent.plot_latent_space(views, y_test, class_names, {name_of(bb): fits[bb] for bb in beta_list})
plotting.savefig(fig, "fig_latent_space", figures)
assert all(math.isfinite(v["explained"]) for v in views.values())
