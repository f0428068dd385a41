"""Point-group symmetry with RELION's names and axis conventions.

A symmetry operator R (3x3, acting on map coordinates x, y, z) satisfies V(R x) = V(x).
The generators are those of RELION's ``SymList::fill_symmetry_class`` (src/symmetries.cpp),
closed into the full group; the identity is always first:

- Cn: n-fold about z.  Ci: inversion.  Cs: mirror z -> -z.  Cnv: Cn + mirror y -> -y.
  Cnh: Cn + mirror z -> -z.  Sn (n even): C(n/2) about z + inversion.
- Dn: Cn + 2-fold about x.  Dnv: Dn + mirror x -> -x.  Dnh: Dn + mirror z -> -z.
- T: 3-fold about z, 2-fold about (0, sqrt(2/3), sqrt(1/3)).  Td: T + mirror with normal
  (sqrt 2, sqrt 6, 0).  Th: T + inversion.
- O: 3-fold about (1, 1, 1)/sqrt 3, 4-fold about z.  Oh: O + mirror with normal (0, 1, 1).
- I2 (= I): 2-fold z, 5-fold (1, 0, phi), 3-fold (0, 1/phi, phi) (normalised; phi the
  golden ratio): 2-folds on x, y, z, 5-folds in the xz plane (Crowther's convention).
- I1: 2-fold x, 5-fold (phi, 0, -1), 3-fold (phi, 1/phi, 0): 2-folds on x, y, z,
  5-folds in the yz plane.
- I3: 2-fold (-1, 0, phi), 5-fold z, 3-fold (-0.49112, 0.35682, 0.79465).
- I4: 2-fold (1, 0, phi), 5-fold (2, 0, 1)/sqrt 5 (z is a 5-fold too), 3-fold
  (0.49112, 0.35682, 0.79465). I3 and I4 are mirror images of each other through x -> -x.
- Ih, I1h..I4h: the icosahedral group plus a mirror with normal (1, 0, 0), (0, 0, -1),
  (phi, 0, 1), (phi, 0, -1) respectively.

Improper groups contain mirrors/inversions (det -1). For projections of a real map, an
improper element M identifies pose A with the proper pose J A M, J = diag(1, 1, -1)
(projection along z sums over z, so the J flip does not change the image), i.e. viewing
direction d with -M d. ``proper_symmetry_matrices`` gives the det +1 subgroup;
``direction_symmetry_matrices`` gives the rotations {R} u {-M} that act on viewing
directions (equal to the proper subgroup for chiral groups, which are the usual case).
RELION symmetrises reconstructions with the full group.

``Symmetry(name)`` parses and checks a user's name once and is its canonical spelling (a
``str``), so settings hold a group that is known to be valid and every function below that
takes ``name: str`` takes it. Parses and groups are cached per name.
"""

from __future__ import annotations

import functools
import math
import re
import warnings

import numpy as np
import torch

from cryopose.errors import UserError

__all__ = [
    "Symmetry",
    "symmetry_argument",
    "symmetry_matrices",
    "proper_symmetry_matrices",
    "direction_symmetry_matrices",
    "pose_symmetry_operators",
    "symmetry_order",
    "normalise_symmetry_name",
    "VALID_SYMMETRY_FORMS",
]

VALID_SYMMETRY_FORMS = "C1, Cn, Ci, Cs, Cnv, Cnh, Sn (n even), Dn, Dnv, Dnh, T, Td, Th, O, Oh, I, I1-I4, Ih, I1h-I4h"

_PHI = (1 + math.sqrt(5)) / 2


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _rotation(axis, angle: float) -> np.ndarray:
    """Counter-clockwise rotation by ``angle`` (rad) about ``axis`` (Rodrigues)."""
    k = _unit(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def _mirror(normal) -> np.ndarray:
    n = _unit(normal)
    return np.eye(3) - 2 * np.outer(n, n)


# Symmetry elements as in RELION's fill_symmetry_class: ("rot", fold, axis) | ("mirror", normal)
# | ("inversion",). Axes are the exact values of RELION's decimals. The icosahedral groups
# are generated from RELION's 2-fold and 5-fold alone (they generate the whole group);
# RELION's 3-fold (listed in ICOSAHEDRAL_3FOLD_AXES) is a member of the result, to the 1e-8
# accuracy of its decimals for I3/I4.
_Element = tuple  # ("rot", fold, axis) | ("mirror", normal) | ("inversion",)
_ICOS: dict[str, list[_Element]] = {
    "I2": [("rot", 2, (0, 0, 1)), ("rot", 5, (1, 0, _PHI))],
    "I1": [("rot", 2, (1, 0, 0)), ("rot", 5, (_PHI, 0, -1))],
    "I3": [("rot", 2, (-1, 0, _PHI)), ("rot", 5, (0, 0, 1))],
    "I4": [("rot", 2, (1, 0, _PHI)), ("rot", 5, (2, 0, 1))],
}
ICOSAHEDRAL_3FOLD_AXES = {
    "I2": (0, 0.356822076, 0.934172364),
    "I1": (0.9341723640, 0.3568220765, 0),
    "I3": (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428),
    "I4": (0.4911234778630044, 0.3568220764705179, 0.7946544753759428),
}
_ICOS_MIRROR = {"I2": (1, 0, 0), "I1": (0, 0, -1), "I3": (_PHI, 0, 1), "I4": (_PHI, 0, -1)}
_T: list[_Element] = [("rot", 3, (0, 0, 1)), ("rot", 2, (0, math.sqrt(2 / 3), math.sqrt(1 / 3)))]
_O: list[_Element] = [("rot", 3, (1, 1, 1)), ("rot", 4, (0, 0, 1))]


def normalise_symmetry_name(name: str) -> Symmetry:
    """Canonical spelling of a symmetry name (upper case, I -> I2, IH -> I2H): ``Symmetry(name)``.

    Raises UserError for a name RELION does not know.
    """
    return Symmetry(name)


def _canonical(name: str) -> str:
    s = name.strip().upper()
    if s == "I":
        return "I2"
    if s == "IH":
        return "I2H"
    return s


def _bad(name: object) -> UserError:
    return UserError(
        f"unknown symmetry {name!r}; give a RELION point group (valid forms: {VALID_SYMMETRY_FORMS})", option="sym"
    )


def _generators(name: str) -> list[_Element]:
    s = _canonical(name)
    m = re.fullmatch(r"([CDS])(\d+)([VH]?)", s)
    if m:
        kind, n, suffix = m.group(1), int(m.group(2)), m.group(3)
        if n < 1:
            raise _bad(name)
        if kind == "S":
            if suffix or n % 2:
                raise _bad(name)
            return [("rot", n // 2, (0, 0, 1)), ("inversion",)]
        elems: list[_Element] = [("rot", n, (0, 0, 1))]
        if kind == "D":
            elems.append(("rot", 2, (1, 0, 0)))
            if suffix == "V":
                elems.append(("mirror", (1, 0, 0)))
            elif suffix == "H":
                elems.append(("mirror", (0, 0, 1)))
        else:
            if suffix == "V":
                elems.append(("mirror", (0, 1, 0)))
            elif suffix == "H":
                elems.append(("mirror", (0, 0, 1)))
        return elems
    if s == "CI":
        return [("inversion",)]
    if s == "CS":
        return [("mirror", (0, 0, 1))]
    if s == "T":
        return list(_T)
    if s == "TD":
        return _T + [("mirror", (math.sqrt(2), math.sqrt(6), 0))]
    if s == "TH":
        return _T + [("inversion",)]
    if s == "O":
        return list(_O)
    if s == "OH":
        return _O + [("mirror", (0, 1, 1))]
    m = re.fullmatch(r"(I[1-4])(H?)", s)
    if m:
        elems = list(_ICOS[m.group(1)])
        if m.group(2):
            elems.append(("mirror", _ICOS_MIRROR[m.group(1)]))
        return elems
    raise _bad(name)


@functools.lru_cache(maxsize=256)
def _parse(name: str) -> str:
    """Canonical spelling of a valid name (each spelling parsed once); UserError otherwise."""
    _generators(name)
    return _canonical(name)


def _canonical_name(name: str) -> str:
    """The canonical spelling of ``name``; a ``Symmetry`` already is one."""
    if isinstance(name, Symmetry):
        return name
    if not isinstance(name, str):
        raise _bad(name)
    return _parse(name)


def symmetry_argument(symmetry: str, sym: str | None, caller: str) -> Symmetry:
    """``symmetry``, or the deprecated keyword ``sym`` of ``caller`` (a DeprecationWarning
    pointing at the code that called ``caller``; kept for one release). TypeError when both
    are given and differ."""
    if sym is None:
        return Symmetry(symmetry)
    warnings.warn(f"{caller}(sym=...) is deprecated; use symmetry=...", DeprecationWarning, stacklevel=3)
    if symmetry != "C1" and Symmetry(symmetry) != Symmetry(sym):
        raise TypeError(f"{caller}() got symmetry={symmetry!r} and sym={sym!r}; give symmetry only")
    return Symmetry(sym)


class Symmetry(str):
    """A point group, as its canonical RELION name: ``Symmetry("d7") == "D7"``, ``Symmetry("i") == "I2"``.

    Constructing it parses and checks the name once (UserError, a ValueError, for a name
    RELION does not know). It is a ``str``: it compares, hashes, prints and goes into JSON as
    its canonical name, pickles (settings shipped to Dask workers), and is taken wherever a
    symmetry name is. ``Symmetry(Symmetry("D7"))`` is the same object.
    """

    __slots__ = ()

    def __new__(cls, name: str = "C1") -> Symmetry:
        if isinstance(name, Symmetry):
            return name
        return super().__new__(cls, _canonical_name(name))

    def __repr__(self) -> str:
        return f"Symmetry({str(self)!r})"

    def __reduce__(self) -> tuple[type[Symmetry], tuple[str]]:
        return Symmetry, (str(self),)

    def __copy__(self) -> Symmetry:
        return self

    def __deepcopy__(self, memo: dict) -> Symmetry:
        return self

    @property
    def matrices(self) -> torch.Tensor:
        """All operators, float64 (G, 3, 3), identity first (``symmetry_matrices``); a new tensor on
        each access (the group itself is computed once per name), so changing it changes nothing else."""
        return symmetry_matrices(self)

    @property
    def proper_matrices(self) -> torch.Tensor:
        """The rotation (det +1) subgroup, float64 (G+, 3, 3), identity first; a new tensor on each access."""
        return proper_symmetry_matrices(self)

    @property
    def order(self) -> int:
        """Number of operators of the full group (proper and improper)."""
        return symmetry_order(self)

    @property
    def is_identity(self) -> bool:
        """Whether the group is C1 (no symmetry)."""
        return self == "C1"


def _close(generators: list[np.ndarray], tol: float = 1e-6) -> np.ndarray:
    """Smallest group containing the generators; identity first, generators next."""
    elems = [np.eye(3)]

    def known(m: np.ndarray, pool: list[np.ndarray]) -> bool:
        return bool(np.any(np.abs(np.stack(pool) - m).max(axis=(1, 2)) < tol))

    for g in generators:
        if not known(g, elems):
            elems.append(g)
    while True:
        stack = np.stack(elems)
        prods = np.einsum("aij,bjk->abik", stack, stack).reshape(-1, 1, 3, 3)
        dist = np.abs(prods - stack[None]).max(axis=(2, 3)).min(axis=1)
        fresh = prods[dist > tol, 0]
        if len(fresh) == 0:
            break
        for p in fresh:
            if not known(p, elems):
                elems.append(p)
        if len(elems) > 10000:
            raise RuntimeError("symmetry group does not close")
    out = np.stack(elems)
    # re-orthonormalise (polar decomposition) to remove rounding from long products
    u, _, vt = np.linalg.svd(out)
    out = u @ vt
    out[np.abs(out) < 1e-15] = 0.0
    return out


@functools.lru_cache(maxsize=128)
def _group(name: str) -> np.ndarray:
    gens: list[np.ndarray] = []
    for el in _generators(name):
        if el[0] == "rot":
            fold, axis = el[1], el[2]
            gens += [_rotation(axis, 2 * math.pi * k / fold) for k in range(1, fold)]
        elif el[0] == "mirror":
            gens.append(_mirror(el[1]))
        else:
            gens.append(-np.eye(3))
    return _close(gens)


def _to_torch(m: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.as_tensor(m.copy(), dtype=dtype, device=device)


def symmetry_matrices(
    name: str, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """All operators of the point group ``name`` (RELION name, any case), shape (G, 3, 3).

    Identity first. Improper groups include their det -1 elements (mirrors, inversion). The
    name is parsed and the group built once per name; each call returns a new tensor.
    Raises UserError for a name RELION does not know.
    """
    return _to_torch(_group(_canonical_name(name)), dtype, device)


def proper_symmetry_matrices(
    name: str, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """The rotation (det +1) subgroup of ``name``, shape (G+, 3, 3), identity first."""
    g = symmetry_matrices(name, dtype=torch.float64)
    return g[torch.linalg.det(g) > 0].to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=128)
def _direction_group(name: str) -> np.ndarray:
    g = _group(name)
    s = np.where(np.linalg.det(g)[:, None, None] > 0, g, -g)
    keep: list[np.ndarray] = []
    for m in s:
        if not keep or np.abs(np.stack(keep) - m).max(axis=(1, 2)).min() > 1e-6:
            keep.append(m)
    return np.stack(keep)


def direction_symmetry_matrices(
    name: str, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> torch.Tensor:
    """Rotations S acting on viewing directions: d is equivalent to S d. Shape (K, 3, 3).

    S = R for each proper R in the group and S = -M for each improper M (pose A is
    equivalent to J A M, whose viewing direction is -M^T d). For chiral groups (Cn, Dn, T,
    O, I...) this is the proper subgroup; for improper ones it is a rotation group
    isomorphic to the point group modulo {I, -I}. Identity first.
    """
    return _to_torch(_direction_group(_canonical_name(name)), dtype, device)


def pose_symmetry_operators(
    name: str, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R), each (G, 3, 3): pose A is equivalent to L_g A R_g for every g (same projection).

    L_g = I and R_g = g for proper g; L_g = J = diag(1, 1, -1) and R_g = g for improper g.
    """
    g = symmetry_matrices(name, dtype=dtype, device=device)
    det = torch.linalg.det(g.to(torch.float64))
    left = torch.eye(3, dtype=dtype, device=device).repeat(g.shape[0], 1, 1)
    left[det < 0, 2, 2] = -1
    return left, g


def symmetry_order(name: str) -> int:
    """Number of operators in the full group ``name`` (proper and improper)."""
    return int(_group(_canonical_name(name)).shape[0])
