"""Mesh helpers for the stand-in builder (numpy only): topology repair, Laplacians, surface queries.

Conventions: vertices ``(V, 3)`` metres in the model frame (x to the subject's left, y up,
z toward the camera); triangles ``(F, 3)`` int, counter-clockwise seen from +z.
"""

from __future__ import annotations

from collections import Counter, defaultdict, deque

import numpy as np


def _edge(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def triangles_from_edges(edges: np.ndarray) -> np.ndarray:
    """All 3-cliques of an undirected edge list ``(E, 2)`` -> sorted triangles ``(T, 3)``."""
    adj: dict[int, set[int]] = defaultdict(set)
    for a, b in np.unique(np.sort(edges, axis=1), axis=0):
        adj[int(a)].add(int(b))
        adj[int(b)].add(int(a))
    tris = set()
    for a in adj:
        for b in adj[a]:
            if b <= a:
                continue
            for c in adj[a] & adj[b]:
                if c > b:
                    tris.add((a, b, c))
    return np.array(sorted(tris), np.int64)


def edge_counts(faces: np.ndarray) -> Counter:
    """How many triangles use each undirected edge."""
    c: Counter = Counter()
    for t in faces:
        for i in range(3):
            c[_edge(int(t[i]), int(t[(i + 1) % 3]))] += 1
    return c


def remove_spurious(faces: np.ndarray) -> np.ndarray:
    """Drop 3-cliques that cap a fan of other triangles.

    A clique triangle whose three edges are each used by three triangles lies on top of the
    real triangles around an interior vertex (a tetrahedron-like configuration); removing it
    makes every edge manifold.
    """
    faces = np.asarray(faces)
    while True:
        ec = edge_counts(faces)
        bad = [i for i, t in enumerate(faces)
               if all(ec[_edge(int(t[k]), int(t[(k + 1) % 3]))] > 2 for k in range(3))]
        if not bad:
            return faces
        faces = np.delete(faces, bad, axis=0)


def orient(faces: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Consistent orientation by breadth-first propagation, then flipped so normals face +z.

    Args:
        faces: ``(F, 3)`` manifold triangles (any winding).
        verts: ``(V, 3)`` positions used to choose the global sign.
    Returns:
        ``(F, 3)`` int32, counter-clockwise seen from +z for the bulk of the surface.
    """
    faces = np.array(faces, np.int64)
    by_edge: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, t in enumerate(faces):
        for k in range(3):
            by_edge[_edge(int(t[k]), int(t[(k + 1) % 3]))].append(i)
    done = np.zeros(len(faces), bool)
    for seed in range(len(faces)):
        if done[seed]:
            continue
        done[seed] = True
        queue = deque([seed])
        while queue:
            i = queue.popleft()
            t = faces[i]
            for k in range(3):
                a, b = int(t[k]), int(t[(k + 1) % 3])
                for j in by_edge[_edge(a, b)]:
                    if j == i or done[j]:
                        continue
                    u = faces[j]
                    # a consistent neighbour traverses the shared edge as (b, a)
                    same = any(int(u[m]) == a and int(u[(m + 1) % 3]) == b for m in range(3))
                    if same:
                        faces[j] = u[[0, 2, 1]]
                    done[j] = True
                    queue.append(j)
    n = face_normals(verts, faces)
    area = np.linalg.norm(np.cross(verts[faces[:, 1]] - verts[faces[:, 0]],
                                   verts[faces[:, 2]] - verts[faces[:, 0]]), axis=1)
    if np.sum(n[:, 2] * area) < 0:
        faces = faces[:, [0, 2, 1]]
    return faces.astype(np.int32)


def boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Closed boundary loops (edges used by one triangle), each as a vertex list."""
    ec = edge_counts(faces)
    adj: dict[int, list[int]] = defaultdict(list)
    for (a, b), c in ec.items():
        if c == 1:
            adj[a].append(b)
            adj[b].append(a)
    seen: set[int] = set()
    loops = []
    for s in sorted(adj):
        if s in seen:
            continue
        loop, prev, cur = [s], -1, s
        seen.add(s)
        while True:
            nxt = [n for n in adj[cur] if n != prev and n not in seen]
            if not nxt:
                break
            prev, cur = cur, nxt[0]
            loop.append(cur)
            seen.add(cur)
        loops.append(loop)
    return loops


def face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit triangle normals ``(F, 3)``."""
    v = verts[faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals ``(V, 3)``."""
    v = verts[faces]
    n = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    out = np.zeros_like(verts)
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def laplacian(n_verts: int, faces: np.ndarray) -> np.ndarray:
    """Uniform graph Laplacian ``(V, V)`` (degree minus adjacency) of the mesh edges."""
    A = np.zeros((n_verts, n_verts))
    for t in faces:
        for k in range(3):
            a, b = t[k], t[(k + 1) % 3]
            A[a, b] = A[b, a] = 1.0
    return np.diag(A.sum(1)) - A


def harmonic(L: np.ndarray, fixed: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Harmonic interpolation: ``L x = 0`` on free vertices with ``x[fixed] = values``.

    Args:
        L: ``(V, V)`` Laplacian.
        fixed: ``(K,)`` vertex indices with prescribed values.
        values: ``(K,)`` or ``(K, D)`` prescribed values.
    Returns:
        ``(V,)`` or ``(V, D)`` interpolated field.
    """
    V = L.shape[0]
    vals = np.asarray(values, np.float64)
    squeeze = vals.ndim == 1
    vals = vals.reshape(len(fixed), -1)
    free = np.setdiff1d(np.arange(V), fixed)
    x = np.zeros((V, vals.shape[1]))
    x[fixed] = vals
    if len(free):
        x[free] = np.linalg.solve(L[np.ix_(free, free)], -L[np.ix_(free, fixed)] @ vals)
    return x[:, 0] if squeeze else x


def graph_distance(n_verts: int, faces: np.ndarray, sources) -> np.ndarray:
    """Edge-hop distance ``(V,)`` from a set of source vertices (inf where unreachable)."""
    adj: dict[int, set[int]] = defaultdict(set)
    for t in faces:
        for k in range(3):
            adj[int(t[k])].add(int(t[(k + 1) % 3]))
            adj[int(t[(k + 1) % 3])].add(int(t[k]))
    d = np.full(n_verts, np.inf)
    q = deque()
    for s in sources:
        d[int(s)] = 0
        q.append(int(s))
    while q:
        a = q.popleft()
        for b in adj[a]:
            if d[b] == np.inf:
                d[b] = d[a] + 1
                q.append(b)
    return d


def closest_point_on_mesh(p: np.ndarray, verts: np.ndarray, faces: np.ndarray
                          ) -> tuple[int, np.ndarray, float]:
    """Nearest surface point to ``p (3,)``: ``(triangle, barycentric (3,), distance)``."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    best = (0, np.array([1.0, 0, 0]), np.inf)
    # candidates: interior projection, then the three edges
    n = np.cross(b - a, c - a)
    nn = np.maximum(np.einsum("fi,fi->f", n, n), 1e-30)
    w = p - a
    # barycentrics of the projection onto each plane
    l1 = np.einsum("fi,fi->f", np.cross(w, c - a), n) / nn
    l2 = np.einsum("fi,fi->f", np.cross(b - a, w), n) / nn
    l0 = 1 - l1 - l2
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    dist_plane = np.abs(np.einsum("fi,fi->f", w, n)) / np.sqrt(nn)
    if inside.any():
        i = int(np.argmin(np.where(inside, dist_plane, np.inf)))
        best = (i, np.array([l0[i], l1[i], l2[i]]), float(dist_plane[i]))
    for (u, v, iu, iv) in ((a, b, 0, 1), (b, c, 1, 2), (c, a, 2, 0)):
        e = v - u
        t = np.clip(np.einsum("fi,fi->f", p - u, e) / np.maximum(np.einsum("fi,fi->f", e, e), 1e-30), 0, 1)
        q = u + t[:, None] * e
        d = np.linalg.norm(p - q, axis=1)
        i = int(np.argmin(d))
        if d[i] < best[2] - 1e-12:
            bc = np.zeros(3)
            bc[iu], bc[iv] = 1 - t[i], t[i]
            best = (i, bc, float(d[i]))
    return best


def raycast_front(xy: np.ndarray, verts: np.ndarray, faces: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Front-most surface hit of rays along -z through points ``xy (N, 2)``.

    Returns:
        ``(tri (N,), bary (N, 3), z (N,))``; ``tri = -1`` and ``z = nan`` where the ray misses.
    """
    v = verts[faces]  # (F, 3, 3)
    a, b, c = v[:, 0, :2], v[:, 1, :2], v[:, 2, :2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    det = np.where(np.abs(det) < 1e-20, 1e-20, det)
    p = xy[:, None, :]  # (N, 1, 2)
    l1 = ((p[..., 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (p[..., 1] - a[:, 1])) / det
    l2 = ((b[:, 0] - a[:, 0]) * (p[..., 1] - a[:, 1]) - (p[..., 0] - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
    l0 = 1 - l1 - l2
    eps = -1e-9
    hit = (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    z = l0 * v[:, 0, 2] + l1 * v[:, 1, 2] + l2 * v[:, 2, 2]
    z = np.where(hit, z, -np.inf)
    tri = np.argmax(z, axis=1)
    zz = z[np.arange(len(xy)), tri]
    ok = np.isfinite(zz)
    bary = np.stack([l0, l1, l2], -1)[np.arange(len(xy)), tri]
    return np.where(ok, tri, -1), np.clip(bary, 0, 1) / np.clip(bary, 0, 1).sum(1, keepdims=True), \
        np.where(ok, zz, np.nan)


def locate_2d(p: np.ndarray, pts2d: np.ndarray, faces: np.ndarray, depth: np.ndarray
              ) -> tuple[int, np.ndarray]:
    """Triangle and barycentric of a 2D point in a projected mesh (nearest point when outside).

    Args:
        p: ``(2,)`` point; pts2d: ``(V, 2)`` projected vertices; depth: ``(V,)`` larger = nearer
        (picks the front-most triangle where the projection folds over).
    """
    v = pts2d[faces]
    a, b, c = v[:, 0], v[:, 1], v[:, 2]
    det = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    l1 = ((p[0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (c[:, 0] - a[:, 0]) * (p[1] - a[:, 1])) / det
    l2 = ((b[:, 0] - a[:, 0]) * (p[1] - a[:, 1]) - (p[0] - a[:, 0]) * (b[:, 1] - a[:, 1])) / det
    l0 = 1 - l1 - l2
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    if inside.any():
        z = (l0 * depth[faces[:, 0]] + l1 * depth[faces[:, 1]] + l2 * depth[faces[:, 2]])
        i = int(np.argmax(np.where(inside, z, -np.inf)))
        return i, np.array([l0[i], l1[i], l2[i]])
    best = (0, np.array([1.0, 0, 0]), np.inf)
    for (u, w, iu, iw) in ((a, b, 0, 1), (b, c, 1, 2), (c, a, 2, 0)):
        e = w - u
        t = np.clip(np.einsum("fi,fi->f", p - u, e) / np.maximum(np.einsum("fi,fi->f", e, e), 1e-12), 0, 1)
        d = np.linalg.norm(p - (u + t[:, None] * e), axis=1)
        i = int(np.argmin(d))
        if d[i] < best[2]:
            bc = np.zeros(3)
            bc[iu], bc[iw] = 1 - t[i], t[i]
            best = (i, bc, d[i])
    return best[0], best[1]
