"""Phantom configuration: presets mirroring the paper's two datasets, scaled by profile.

Paper ("Hand X-ray datasets"): a public set of 1,154 hand radiographs of 1400 x 900 pixels with
bone masks and no osteoporosis labels, and a clinical set of 192 subjects at 2515 x 3588 pixels
with DXA T-scores. Conventions chosen here:

* public: "1400 x 900" is read as height 1400, width 900 (portrait, as hand radiographs are
  displayed), pixel spacing 0.2 mm, i.e. a 180 x 280 mm field of view.
* clinical: "2515 x 3588" is read as width 2515, height 3588 (portrait), pixel spacing 0.1 mm,
  i.e. a 251.5 x 358.8 mm field of view.

Profiles keep the field of view in millimetres and coarsen the pixel spacing by an integer
factor: `paper` is full size, `quick` 1/2 (public) and 1/4 (clinical) linear size, `smoke`
1/5 and 1/8 with few images, so a whole smoke dataset renders in seconds on one core.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.errors import BenchError

GENERATOR_VERSION = "phantom-1.2"   # 1.2: a splint plate covers a forearm bone whole, and the masks leave out
                                    # whatever a plate hides (neighbours too); 1.1: head exclusion 5-35 %

#: Paper-size settings of each preset (profile `paper`).
PRESETS: dict[str, dict] = {
    "public": dict(n_images=1154, height=1400, width=900, pixel_spacing_mm=0.2, labeled=False,
                   female_fraction=0.5, age_model="adult", subject_prefix="pub"),
    "clinical": dict(n_images=192, height=3588, width=2515, pixel_spacing_mm=0.1, labeled=True,
                     female_fraction=169 / 192, age_model="table2", subject_prefix="cli"),
}

#: profile -> preset -> (number of images, linear down-scaling factor).
PROFILES: dict[str, dict[str, tuple[int, int]]] = {
    "smoke": {"public": (40, 5), "clinical": (60, 8)},
    "quick": {"public": (400, 2), "clinical": (192, 4)},
    "paper": {"public": (1154, 1), "clinical": (192, 1)},
}


@dataclass(frozen=True)
class PhantomConfig:
    """Everything the generator needs; defaults come from :meth:`for_preset`."""

    preset: str = "public"            # paper dataset mirrored: public | clinical
    profile: str = "smoke"            # size profile: smoke | quick | paper
    n_images: int = 40                # images to generate, one per subject
    height: int = 280                 # image rows (px)
    width: int = 180                  # image columns (px)
    pixel_spacing_mm: float = 1.0     # isotropic detector pixel spacing (mm)
    annotators: int = 3               # M annotator label maps per image (1..4)
    head_exclusion: tuple[float, float] = (0.05, 0.35)  # annotators' P(leave the distal head out),
                                      # spread evenly over (low, high): a minority mode, so the
                                      # beta-weighted majority draws the exact bone (1.0: 0.1-0.7)
    labeled: bool = False             # manifest carries sex, age, t_score and label
    prevalence: float = 0.30          # target P(T-score < -2.5) of the subject population
    signal: float = 1.0               # THE signal knob: slope of the latent bone parameters on the
                                      # T-score (1.0 -> oracle AUC about 0.90; 0 -> no density signal:
                                      # age and sex, which predict the label, still shape the bones)
    female_fraction: float = 0.5      # P(sex = F)
    age_model: str = "adult"          # age distribution: table2 (paper Table 2) | adult (18-90 uniform)
    subject_prefix: str = "pub"       # subject_id prefix; differs between presets
    missing_rate: float = 0.03        # P(a target bone is out of field or occluded)
    nuisance: bool = True             # False renders clean images (no pose variation, noise, metal)
    max_rotation_deg: float = 25.0    # hand rotation drawn uniformly in +-this
    scale_range: float = 0.08         # magnification drawn uniformly in 1 +- this
    translate_frac: float = 0.06      # hand offset drawn in +- this fraction of the field
    p_left: float = 0.5               # P(left hand)
    p_marker: float = 0.85            # P("L"/"R" lead marker in the field)
    p_ring: float = 0.15              # P(a ring on a finger)
    p_watch: float = 0.08             # P(a watch on the wrist)
    p_collimation: float = 0.6        # P(visible collimator edges)
    p_site_b: float = 0.5             # P(acquisition site B; A otherwise)
    dose_range: tuple[float, float] = (3e4, 1.5e5)   # detected quanta per mm^2 (log-uniform)
    split_seed: int | None = None     # seed of the subject-wise split (None: the dataset seed)

    @classmethod
    def for_preset(cls, preset: str = "public", profile: str = "smoke") -> "PhantomConfig":
        """The settings of `preset` (public | clinical) at `profile` (smoke | quick | paper)."""
        if preset not in PRESETS:
            raise BenchError(f"unknown phantom preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if profile not in PROFILES:
            raise BenchError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
        base = dict(PRESETS[preset])
        n, factor = PROFILES[profile][preset]
        base["n_images"] = n
        base["height"] = int(round(base["height"] / factor))
        base["width"] = int(round(base["width"] / factor))
        base["pixel_spacing_mm"] = base["pixel_spacing_mm"] * factor
        return cls(preset=preset, profile=profile, **base)

    def replace(self, **changes) -> "PhantomConfig":
        """A copy with some fields changed (validated)."""
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    @property
    def n_subjects(self) -> int:
        return self.n_images

    @property
    def field_mm(self) -> tuple[float, float]:
        """Field of view (height, width) in millimetres."""
        return self.height * self.pixel_spacing_mm, self.width * self.pixel_spacing_mm

    def validate(self) -> None:
        """Raise BenchError naming the first bad option and its valid range."""
        checks = [
            (self.preset in PRESETS, f"preset must be one of {', '.join(PRESETS)}"),
            (self.n_images >= 1, "the number of images (--n) must be at least 1"),
            (1 <= self.annotators <= 4, "--annotators must be between 1 and 4"),
            (len(self.head_exclusion) == 2 and 0.0 <= self.head_exclusion[0] <= self.head_exclusion[1] <= 1.0,
             "--head-exclusion takes two probabilities LOW HIGH with 0 <= LOW <= HIGH <= 1"),
            (0.0 < self.prevalence < 1.0, "--prevalence must lie strictly between 0 and 1"),
            (self.signal >= 0.0, "--signal must be >= 0 (1.0 is the calibrated default)"),
            (0.0 <= self.female_fraction <= 1.0, "female_fraction must lie in [0, 1]"),
            (self.age_model in ("table2", "adult"), "age_model must be 'table2' or 'adult'"),
            (0.0 <= self.missing_rate <= 1.0, "missing_rate must lie in [0, 1]"),
            (self.height >= 32 and self.width >= 32, "images must be at least 32 x 32 pixels"),
            (self.pixel_spacing_mm > 0, "pixel_spacing_mm must be positive"),
            (self.dose_range[0] > 0 and self.dose_range[1] >= self.dose_range[0],
             "dose_range must be two positive numbers, low <= high"),
        ]
        for ok, message in checks:
            if not ok:
                raise BenchError(f"invalid phantom configuration: {message}")
