"""The release ledger: the atoms of a site's rows, so that no combination of releases isolates
fewer than k patients.

Side: site (under ``privacy/``, which both sides read; only the site executor builds one).

A release sums something over a *row set* (a ``where=`` cohort, a group, the rows left after
dropping missing values, a cluster). The ledger keeps, per dataset, the partition of the rows into
*atoms*: rows that were in exactly the same released row sets. Every linear combination of releases
is a sum over a union of whole atoms, so while every atom has 0 or at least ``k`` rows, no pair,
triple or any other combination of released row sets — across analyses, subgroups and researchers
— singles out fewer than ``k`` patients.

Before a step sums over rows, the site *snaps* them to the atoms (:meth:`Ledger.snap`): the rows
are labelled (``-1``: not released; ``0, 1, ...``: released groups, e.g. one label for a cohort, one
per level of a ``by=`` column) and in every atom they cut, a piece of fewer than ``k`` rows joins the
atom's largest piece. Rows that cannot join a released group (``fixed``: e.g. a missing value the
step needs) stay out; if they are fewer than ``k``, rows of the largest group join them (chosen in an
order secret to the site) until they are ``k``, or the whole group when too few would remain. The
atoms are then refined by the snapped labels. Nothing is refused, so no refusal depends on the data:
``where="id != 17"`` after an unfiltered query is answered on every row, whether or not patient 17
exists.

A ledger with a path is written (atomically: a temporary file, ``fsync``, rename) when a transaction
commits, which the executor does before the reply leaves; it is read again when the site restarts.
Several processes may keep the same site's ledger (a kernel and the Jupyter server's view of a
federation file): a transaction holds a lock on the file and first reads what another process
wrote since.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedhem_kernel.errors import SchemaError

FORMAT = 1


def record_keys(secret: bytes, n: int) -> np.ndarray:
    """A secret 64-bit key per row (a ChaCha20 stream under the site's secret): a count's
    perturbation is keyed by the sum of its rows' keys, so the same rows get the same
    perturbation however they are asked for (the ABS's cell-key method)."""
    key = hashlib.blake2b(secret, digest_size=32, person=b"fedhem-rowkeys").digest()
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * n)), dtype=np.uint64).copy()


def cell_key_noise(
    secret: bytes, key_sums: np.ndarray, counts: np.ndarray, where: bytes
) -> np.ndarray:
    """A perturbation in {-1, 0, 1} per count: keyed by the sum of its rows' keys (``key_sums``,
    mod 2^64) when it counts anyone, so the same rows give the same number wherever they are
    counted; an empty count is keyed by its place (``where`` and its index) instead, so empty
    counts do not all share one recognisable number."""
    flat_keys = np.asarray(key_sums, dtype=np.uint64).reshape(-1)
    flat_counts = np.asarray(counts).reshape(-1)
    # empty counts: one ChaCha20 stream for the place, a word per index
    place = hashlib.blake2b(where, key=secret, digest_size=32, person=b"fedhem-empty").digest()
    stream = Cipher(algorithms.ChaCha20(place, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(8 * len(flat_keys))), dtype=np.uint64)
    out = (words % np.uint64(3)).astype(np.int64) - 1
    # counts of someone: one keyed hash per distinct set of rows (a plateau shares its key)
    filled = flat_counts != 0
    unique, inverse = np.unique(flat_keys[filled], return_inverse=True)
    noise = np.empty(len(unique), dtype=np.int64)
    for i, k in enumerate(unique.tolist()):
        digest = hashlib.blake2b(
            int(k).to_bytes(8, "little"), key=secret, digest_size=8, person=b"fedhem-cellkey"
        )
        noise[i] = int.from_bytes(digest.digest(), "little") % 3 - 1
    out[filled] = noise[inverse.reshape(-1)]
    return out.reshape(np.shape(counts))


def _secret_ranks(secret: bytes, n: int) -> np.ndarray:
    """A rank per row from a ChaCha20 keystream under the site's secret: the order in which rows
    leave a group to make a left-out piece k (unpredictable without the secret)."""
    stream = Cipher(algorithms.ChaCha20(secret, bytes(16)), mode=None).encryptor()
    words = np.frombuffer(stream.update(bytes(8 * n)), dtype=np.uint64)
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(words, kind="stable")] = np.arange(n)
    return ranks


def _dense(keys: np.ndarray) -> bool:
    """Whether non-negative ``keys`` are few enough for a table of them (no sort needed)."""
    return keys.size > 0 and int(keys.max()) <= 4 * keys.size + 1024


def _factorize(keys: np.ndarray) -> np.ndarray:
    """Dense ids 0..m-1 for the distinct values of non-negative ``keys`` (any dense labelling of
    the same partition): a table when the keys are small, else a sort."""
    if _dense(keys):
        present = np.zeros(int(keys.max()) + 1, dtype=bool)
        present[keys] = True
        ids = np.cumsum(present) - 1
        return ids[keys].astype(np.int64)
    _, inverse = np.unique(keys, return_inverse=True)
    return inverse.astype(np.int64)


def _pieces(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct keys and how many rows hold each."""
    if _dense(keys):
        counts = np.bincount(keys)
        present = np.flatnonzero(counts)
        return present, counts[present]
    return np.unique(keys, return_counts=True)


def snap_labels(
    atoms: np.ndarray,
    labels: np.ndarray,
    k: int,
    ranks: np.ndarray,
    fixed: np.ndarray | None = None,
) -> np.ndarray:
    """Labels (``-1`` not released, ``0..g-1`` released groups) snapped to the atoms: every piece
    an atom is cut into has 0 or at least ``k`` rows. ``fixed`` rows never get a released label.

    Pure function of its inputs (see the module docstring for the rule).
    """
    labels = np.array(labels, dtype=np.int64)  # a copy
    if fixed is not None:
        fixed = np.asarray(fixed, dtype=bool)
        labels[fixed] = -1
    out = labels.copy()
    if labels.size == 0 or k <= 1:
        return out
    shifted = labels + 1  # 0: not released
    width = int(shifted.max()) + 1
    keys = atoms * width + shifted
    uniq, size = _pieces(keys)
    p_atom = uniq // width
    # an atom needs work when it is cut into pieces and one of them is small
    n_pieces = np.bincount(p_atom, minlength=int(p_atom.max()) + 1)
    small_piece = size < k
    trouble = np.unique(p_atom[small_piece & (n_pieces[p_atom] > 1)])
    if trouble.size == 0:
        return out
    in_trouble = np.isin(atoms, trouble)
    rows = np.flatnonzero(in_trouble)
    order = np.argsort(atoms[rows], kind="stable")
    rows = rows[order]
    bounds = np.flatnonzero(np.diff(atoms[rows])) + 1
    for members in np.split(rows, bounds):
        _snap_atom(out, labels, members, k, ranks, fixed)
    return out


def _snap_atom(
    out: np.ndarray,
    labels: np.ndarray,
    members: np.ndarray,
    k: int,
    ranks: np.ndarray,
    fixed: np.ndarray | None,
) -> None:
    own = labels[members]
    values, counts = np.unique(own, return_counts=True)
    # the largest piece; on a tie, "not released" first, then the lowest label
    best = max(range(len(values)), key=lambda i: (counts[i], -values[i] if values[i] >= 0 else 1))
    target = int(values[best])
    new = own.copy()
    for value, count in zip(values, counts, strict=True):
        if value != target and count < k:
            new[own == value] = target
    if fixed is not None:
        pinned = fixed[members]
        new[pinned] = -1
        left_out = int((new == -1).sum())
        if target >= 0 and 0 < left_out < k:
            group = np.flatnonzero(new == target)
            group = group[np.argsort(ranks[members[group]], kind="stable")]
            take = k - left_out
            if len(group) - take < k:
                take = len(group)  # too few would remain: the whole group stays out
            new[group[:take]] = -1
    out[members] = new


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Ledger:
    """The atoms of one dataset's rows at one site (in memory, or kept in ``path``)."""

    def __init__(
        self,
        site: str,
        dataset: str,
        n_rows: int,
        k: int,
        path: Path | None = None,
        secret: bytes | None = None,
    ) -> None:
        """``secret`` (32 bytes) orders the rows that leave a group to make a left-out piece k;
        drawn at random when not given. A ledger kept in ``path`` keeps the secret it was made
        with."""
        self.site = site
        self.dataset = dataset
        self.n_rows = int(n_rows)
        self.k = int(k)
        self.path = Path(path) if path is not None else None
        self._lock = threading.RLock()
        self.version = 0
        self._stamp: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        with self._file_lock():
            if self.path is not None and self.path.exists():
                self.atoms, self._secret = self._read(self.path)
            else:
                self.atoms = np.zeros(self.n_rows, dtype=np.int64)
                self._secret = secret if secret is not None else os.urandom(32)
                if len(self._secret) != 32:
                    raise ValueError("a ledger's secret has 32 bytes")
                if self.path is not None:
                    self._write()
        self.ranks = _secret_ranks(self._secret, self.n_rows)

    @property
    def secret(self) -> bytes:
        """The site's secret for this dataset (orders rows, keys perturbations); never leaves."""
        return self._secret

    def _file_lock(self):  # noqa: ANN202 - a context manager
        """An exclusive lock on ``<path>.lock`` (no file lock for a ledger in memory)."""
        if self.path is None:
            return nullcontext()
        return _flock(self.path.with_name(self.path.name + ".lock"))

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)  # type: ignore[arg-type]
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _refresh(self) -> None:
        """Read the file again if another process wrote it since (under the file lock)."""
        if self.path is not None and self._stat() != self._stamp and self.path.exists():
            self.atoms, self._secret = self._read(self.path)
            self.ranks = _secret_ranks(self._secret, self.n_rows)
            self.version += 1

    # -- persistence --------------------------------------------------------------------------
    def _read(self, path: Path) -> tuple[np.ndarray, bytes]:
        try:
            with np.load(path, allow_pickle=False) as data:
                fmt = int(data["format"])
                atoms = np.asarray(data["atoms"], dtype=np.int64)
                secret = bytes(np.asarray(data["secret"], dtype=np.uint8))
        except (OSError, ValueError, KeyError):
            raise SchemaError(
                "the release ledger of this dataset cannot be read (restore it from a backup)",
                site=self.site,
                dataset=self.dataset,
                rule="ledger",
            ) from None
        self._stamp = self._stat()
        if fmt != FORMAT or len(secret) != 32:
            raise SchemaError(
                "the release ledger of this dataset has an unknown format",
                site=self.site,
                dataset=self.dataset,
                rule="ledger",
            )
        if atoms.shape != (self.n_rows,):
            raise SchemaError(
                "the dataset's rows changed since its release ledger was written (the ledger "
                "keeps one atom per row: restore the data, or retire the ledger knowingly)",
                site=self.site,
                dataset=self.dataset,
                rule="ledger",
            )
        return atoms, secret

    def _write(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                format=np.int64(FORMAT),
                atoms=self.atoms,
                secret=np.frombuffer(self._secret, dtype=np.uint8),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._stamp = self._stat()

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Snap row sets against the atoms; the refinement is kept (and written) only if the
        block ends without an exception. Transactions of one ledger run one at a time."""
        with self._lock, self._file_lock():
            self._refresh()
            txn = Transaction(self)
            yield txn
            if txn.changed:
                self.atoms = txn.atoms
                self.version += 1
                if self.path is not None:
                    self._write()

    @property
    def n_atoms(self) -> int:
        return int(self.atoms.max(initial=-1)) + 1

    def sizes(self) -> np.ndarray:
        return np.bincount(self.atoms, minlength=self.n_atoms)


class Transaction:
    """One request's work on a ledger: its snapped row sets refine a copy of the atoms."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.atoms = ledger.atoms
        self.changed = False

    def preview(self, labels: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
        """What :meth:`snap` would give, without refining the atoms (nothing is recorded)."""
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (self.ledger.n_rows,):
            raise ValueError("labels must cover every row of the dataset")
        return snap_labels(self.atoms, labels, self.ledger.k, self.ledger.ranks, fixed)

    def snap(self, labels: np.ndarray, fixed: np.ndarray | None = None) -> np.ndarray:
        """Snap labels of every row of the dataset (``-1``: not released) and refine the atoms."""
        snapped = self.preview(labels, fixed)
        width = int(snapped.max(initial=-1)) + 2
        refined = _factorize(self.atoms * width + (snapped + 1))
        if int(refined.max(initial=-1)) + 1 != int(self.atoms.max(initial=-1)) + 1:
            self.atoms = refined
            self.changed = True
        return snapped
