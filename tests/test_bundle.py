"""Scene bundles: planning, deterministic packing, hostile archives, the node cache."""

from __future__ import annotations

import io
import ntpath
import os
import posixpath
import stat
import struct
import threading
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from farm.bundle.cache import STALE_DOWNLOAD_SECONDS, BundleCache, copy_for_render, unpack
from farm.bundle.checking import check_archive
from farm.bundle.packing import BundlePlan, pack, plan_bundle, scan_strings
from farm.bundle.rules import bundle_hash, check_member_name
from farm.faults import Code, FarmError

DRUMS = Path("/usr/share/povray-3.7/scenes/advanced/drums2/drums.pov")


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def make_zip(*members: tuple[str, bytes], mode: int = stat.S_IFREG | 0o644) -> bytes:
    """A zip written by hand: names go in exactly as given (zipfile would cut at NUL)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members:
            info = zipfile.ZipInfo("placeholder")
            info.filename = name
            info.external_attr = mode << 16
            archive.writestr(info, data)
    return buffer.getvalue()


class raises_code:
    """Like pytest.raises(FarmError), also checking the code; the error lands in .error."""

    def __init__(self, code: Code):
        self.code = code

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        assert kind is FarmError, f"expected FarmError({self.code.name}), got {kind}"
        assert exc.code == self.code, f"expected {self.code.name}, got {exc.code.name}: {exc}"
        self.error = exc
        return True


# ---------------------------------------------------------------------------
# The lexer

def test_scan_strings_skips_comments_and_marks_includes():
    text = '''
    // "line.inc"
    /* "block.inc" /* "nested.inc" */ "still-comment.inc" */
    #include "real.inc"
    # include /* why not */ "spaced.inc"
    #include concat("computed", ".inc")
    image_map { png "a \\"quoted\\" name.png" }
    "// not a comment" "/* nor this */"
    '''
    assert list(scan_strings(text)) == [
        ("real.inc", True), ("spaced.inc", True), ("computed", False), (".inc", False),
        ('a "quoted" name.png', False), ("// not a comment", False), ("/* nor this */", False)]


def test_scan_strings_tolerates_unterminated_things():
    assert list(scan_strings('/* open')) == []
    assert list(scan_strings('"open')) == [("open", False)]
    assert list(scan_strings('#include')) == []


# ---------------------------------------------------------------------------
# Planning

@pytest.mark.skipif(not DRUMS.exists(), reason="POV-Ray examples not installed")
def test_plan_drums_example():
    plan = plan_bundle(DRUMS)
    assert plan.root == DRUMS.parent
    assert plan.scene == "drums.pov"
    assert plan.files == ("drums.inc", "drums.pov", "rednewt.png")   # not colors.inc etc.


def test_plan_nested_includes_in_subfolder(tmp_path):
    scene = write(tmp_path / "scene" / "main.pov", '#include "parts/a.inc"\nsphere{0,1}\n')
    write(tmp_path / "scene" / "parts" / "a.inc", '#include "b.inc"\n'            # beside a.inc
                                                   '#include "parts/c.mcr"\n')   # beside the scene
    write(tmp_path / "scene" / "parts" / "b.inc", 'image_map { png "wood" }\n')   # extension implied
    write(tmp_path / "scene" / "parts" / "c.mcr", '#declare F = "data.csv";\n')
    write(tmp_path / "scene" / "parts" / "wood.png", b"\x89PNG")
    write(tmp_path / "scene" / "data.csv", "1,2\n")
    write(tmp_path / "scene" / "unused.inc", "")
    plan = plan_bundle(scene)
    assert plan.root == tmp_path / "scene"
    assert plan.scene == "main.pov"
    assert plan.files == ("data.csv", "main.pov", "parts/a.inc", "parts/b.inc", "parts/c.mcr",
                          "parts/wood.png")


def test_plan_survives_include_cycle(tmp_path):
    scene = write(tmp_path / "main.pov", '#include "a.inc"\n')
    write(tmp_path / "a.inc", '#include "b.inc"\n')
    write(tmp_path / "b.inc", '#include "a.inc"\n#include "main.pov"\n')
    assert plan_bundle(scene).files == ("a.inc", "b.inc", "main.pov")


def test_plan_caps_include_depth(tmp_path, monkeypatch):
    monkeypatch.setattr("farm.bundle.packing.MAX_INCLUDE_DEPTH", 3)
    scene = write(tmp_path / "main.pov", '#include "i1.inc"\n')
    for i in range(1, 8):
        write(tmp_path / f"i{i}.inc", f'#include "i{i + 1}.inc"\n')
    assert plan_bundle(scene).files == ("i1.inc", "i2.inc", "i3.inc", "main.pov")


def test_plan_parent_reference_moves_root_up(tmp_path):
    scene = write(tmp_path / "proj" / "scenes" / "s.pov", 'image_map { png "../shared/tex.png" }\n')
    write(tmp_path / "proj" / "shared" / "tex.png", b"png")
    plan = plan_bundle(scene)
    assert plan.root == tmp_path / "proj"
    assert plan.scene == "scenes/s.pov"
    assert plan.files == ("scenes/s.pov", "shared/tex.png")


def test_plan_ignores_comments_absolute_and_missing_names(tmp_path):
    write(tmp_path / "in_comment.png", b"x")
    write(tmp_path / "in_block.inc", "")
    absolute = write(tmp_path / "abs.inc", "")
    scene = write(tmp_path / "s.pov", f'// png "in_comment.png"\n/* #include "in_block.inc" */\n'
                                      f'#include "{absolute}"\n#include "colors.inc"\n'
                                      f'#include "nowhere/x.inc"\n')
    assert plan_bundle(scene).files == ("s.pov",)


def test_plan_assets_and_ini(tmp_path):
    scene = write(tmp_path / "s.pov", 'sphere{0,1}\n')
    write(tmp_path / "extra" / "deep" / "a.txt", "a")
    write(tmp_path / "extra" / "b.txt", "b")
    write(tmp_path / "s.ini", "; comment\nInput_File_Name=s.pov\nInclude_Ini = more.ini\n")
    write(tmp_path / "more.ini", "Width=320\n")
    plan = plan_bundle(scene, [tmp_path / "extra", tmp_path / "s.ini"])
    assert plan.files == ("extra/b.txt", "extra/deep/a.txt", "more.ini", "s.ini", "s.pov")


def test_plan_missing_scene_and_asset(tmp_path):
    with raises_code(Code.SCENE_NOT_FOUND) as caught:
        plan_bundle(tmp_path / "nope.pov")
    assert "nope.pov: no such scene file" in str(caught.error)
    with raises_code(Code.SCENE_NOT_FOUND):
        plan_bundle(tmp_path)                       # a directory is not a scene
    scene = write(tmp_path / "s.pov", "")
    with raises_code(Code.BAD_ARGUMENT):
        plan_bundle(scene, [tmp_path / "missing"])


def test_plan_checks_limits_early(tmp_path):
    scene = write(tmp_path / "s.pov", '#include "a.inc"\n')
    write(tmp_path / "a.inc", "x" * 100)
    with raises_code(Code.BUNDLE_TOO_LARGE):
        plan_bundle(scene, max_files=1)
    with raises_code(Code.BUNDLE_TOO_LARGE):
        plan_bundle(scene, max_total=50)


# ---------------------------------------------------------------------------
# Packing and unpacking

def make_tree(root: Path) -> BundlePlan:
    scene = write(root / "s.pov", '#include "inc/a.inc"\n')
    write(root / "inc" / "a.inc", 'image_map { png "tex.png" }\n' * 50)
    write(root / "inc" / "tex.png", bytes(range(256)) * 4)
    return plan_bundle(scene)


def test_pack_is_deterministic(tmp_path):
    first = make_tree(tmp_path / "one")
    data = pack(first)
    assert pack(first) == data
    time.sleep(0.01)
    second = make_tree(tmp_path / "elsewhere" / "two")   # other place, other mtimes
    (second.root / "inc" / "tex.png").chmod(0o600)
    assert bundle_hash(pack(second)) == bundle_hash(data)
    assert bundle_hash(data).startswith("sha256:") and len(bundle_hash(data)) == 7 + 64
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["inc/a.inc", "inc/tex.png", "s.pov"]
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_DEFLATED}


def test_unpack_round_trip(tmp_path):
    plan = make_tree(tmp_path / "src")
    data = pack(plan)
    dest = tmp_path / "cache" / "b"
    unpack(data, dest, bundle_hash(data))
    for name in plan.files:
        assert (dest / name).read_bytes() == (plan.root / name).read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["b"]   # no temp left behind
    with pytest.raises(FileExistsError):
        unpack(data, dest, bundle_hash(data))


def test_unpack_refuses_hash_mismatch(tmp_path):
    data = pack(make_tree(tmp_path / "src"))
    with raises_code(Code.BAD_BUNDLE):
        unpack(data, tmp_path / "b", bundle_hash(data + b"x"))
    with raises_code(Code.BAD_ARGUMENT):
        unpack(data, tmp_path / "b", "md5:1234")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("name", [
    "/etc/passwd", "../escape", "a/../../escape", "a/..", "..", "C:evil", "c:/evil", "D:\\evil",
    "a\\..\\b", "a\x00b", "a\nb", "a\x7fb", "a//b", "a/", "/", "", "./a", "a/./b", ".", "ok/file:stream",
    "x" * 256,
])
def test_check_member_name_refuses(name):
    with raises_code(Code.BAD_BUNDLE):
        check_member_name(name)


@pytest.mark.parametrize("name", ["a", "a/b.inc", "..a", "a..", "a/.hidden", "spaced name.png", "ünï/cödé.inc"])
def test_check_member_name_accepts(name):
    assert check_member_name(name) == name


@pytest.mark.parametrize("name", ["/abs", "../up", "a/../../up", "C:drive", "back\\slash", "nul\x00byte",
                                  "ctrl\x01", "a//b", "./a", "a/."])
def test_check_archive_refuses_bad_names(name):
    with raises_code(Code.BAD_BUNDLE) as caught:
        check_archive(make_zip((name, b"x")))
    assert repr(name) in str(caught.error)


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("members", [
    [("a", b"1"), ("a", b"2")],                  # duplicate
    [("Tex.png", b"1"), ("tex.png", b"2")],      # duplicate on case-insensitive filesystems
    [("a", b"1"), ("a/b", b"2")],                # a file used as a directory
    [("dir/", b"")],                             # directory entry
])
def test_check_archive_refuses_confusing_trees(members):
    with raises_code(Code.BAD_BUNDLE):
        check_archive(make_zip(*members))


def test_check_archive_refuses_symlinks_and_special_files():
    with raises_code(Code.BAD_BUNDLE) as caught:
        check_archive(make_zip(("link", b"/etc/passwd"), mode=stat.S_IFLNK | 0o777))
    assert "symbolic link" in str(caught.error)
    with raises_code(Code.BAD_BUNDLE):
        check_archive(make_zip(("fifo", b""), mode=stat.S_IFIFO | 0o644))


def test_check_archive_refuses_garbage():
    with raises_code(Code.BAD_BUNDLE):
        check_archive(b"not a zip at all")
    with raises_code(Code.BAD_BUNDLE):
        check_archive(make_zip(("a", b"x"))[:-10])


def test_check_archive_limits():
    data = make_zip(*[(f"f{i}", b"x") for i in range(5)])
    assert len(check_archive(data, max_files=5)) == 5
    with raises_code(Code.BUNDLE_TOO_LARGE):
        check_archive(data, max_files=4)
    big = make_zip(("big", bytes(10_000)))
    with raises_code(Code.BUNDLE_TOO_LARGE):
        check_archive(big, max_total=9_999)


def test_check_archive_trusts_declared_size_before_extracting():
    """A tiny archive that declares a huge size is refused without reading it."""
    data = bytearray(make_zip(("a", b"small")))
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 0xFFFF0000)    # uncompressed size in the central directory
    with raises_code(Code.BUNDLE_TOO_LARGE):
        check_archive(bytes(data), max_total=1 << 20)


def test_unpack_counts_real_bytes(tmp_path, monkeypatch):
    """Should a lying archive get past check_archive, extraction still stops at the limit."""
    data = make_zip(("a", bytes(3000)), ("b", bytes(3000)))
    monkeypatch.setattr("farm.bundle.cache.check_archive", lambda d, mf, mt: ["a", "b"])
    with raises_code(Code.BUNDLE_TOO_LARGE):
        unpack(data, tmp_path / "b", bundle_hash(data), max_total=5000)
    assert list(tmp_path.iterdir()) == []          # neither dest nor the temporary directory


def test_unpack_refuses_corrupt_member(tmp_path):
    data = bytearray(make_zip(("a", b"hello world" * 10)))
    data[40] ^= 0xFF                                 # inside the compressed/stored data
    data = bytes(data)
    with raises_code(Code.BAD_BUNDLE):
        unpack(data, tmp_path / "b", bundle_hash(data))
    assert list(tmp_path.iterdir()) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["..", ".", "a", "b.inc", "", "C:", "\\", "/", "\x00", "~", " ", ":"]),
                max_size=6).map("/".join) | st.text(max_size=20))
def test_check_member_name_never_escapes(name):
    try:
        check_member_name(name)
    except FarmError as exc:
        assert exc.code == Code.BAD_BUNDLE
        return
    for flavour, root in ((posixpath, "/root"), (ntpath, "C:\\root")):
        joined = flavour.normpath(flavour.join(root, name))
        assert joined.startswith(root + flavour.sep), (flavour.__name__, name, joined)
    assert "\x00" not in name


# ---------------------------------------------------------------------------
# The node's cache and render copies

def test_cache_fetches_once_across_threads(tmp_path):
    data = pack(make_tree(tmp_path / "src"))
    digest = bundle_hash(data)
    cache = BundleCache(tmp_path / "cache")
    calls = []

    def fetch():
        calls.append(1)
        time.sleep(0.05)
        return data

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.ensure(digest, fetch))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert set(results) == {cache.path_for(digest)}
    assert (cache.path_for(digest) / "s.pov").is_file()
    assert cache.ensure(digest, lambda: pytest.fail("fetched again")) == cache.path_for(digest)


def test_cache_shared_by_two_processes_keeps_one_copy(tmp_path):
    data = pack(make_tree(tmp_path / "src"))
    digest = bundle_hash(data)
    ours, theirs = BundleCache(tmp_path / "cache"), BundleCache(tmp_path / "cache")

    def fetch_while_the_other_wins():
        theirs.ensure(digest, lambda: data)       # the other process finishes first
        return data

    path = ours.ensure(digest, fetch_while_the_other_wins)
    assert (path / "inc" / "tex.png").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [digest[7:]]


def test_cache_rejects_bad_digest_and_bad_data(tmp_path):
    cache = BundleCache(tmp_path / "cache")
    with raises_code(Code.BAD_ARGUMENT):
        cache.path_for("sha256:../../etc")
    digest = bundle_hash(b"expected")
    with raises_code(Code.BAD_BUNDLE):
        cache.ensure(digest, lambda: b"something else")
    assert not cache.path_for(digest).exists()


def test_unfinished_downloads_are_swept_when_stale_or_no_longer_needed(tmp_path):
    """A cut-short download is kept for a retry or a restarted node to resume, but not forever: one not
    added to for STALE_DOWNLOAD_SECONDS goes when the cache opens (a node starts) and before a new download,
    and so does one whose bundle is unpacked after all."""
    data = pack(make_tree(tmp_path / "src"))
    digest = bundle_hash(data)
    directory = tmp_path / "cache"
    BundleCache(directory).ensure(digest, lambda: data)
    old = time.time() - STALE_DOWNLOAD_SECONDS - 60
    others = [bundle_hash(name.encode()) for name in ("fresh", "stale", "later")]
    fresh, stale, later = (BundleCache(directory).download_path(other) for other in others)
    for part in (fresh, stale, later, directory / f"{digest[7:]}.download"):
        part.write_bytes(b"part of a bundle")
    os.utime(stale, (old, old))
    cache = BundleCache(directory)                             # a node starts
    assert fresh.exists() and later.exists() and not stale.exists()
    assert not (directory / f"{digest[7:]}.download").exists()   # its bundle is here: nothing to resume
    os.utime(later, (old, old))                                # the node runs on; a day passes
    assert cache.ensure(digest, lambda: pytest.fail("fetched again")) and later.exists()   # no download
    fetched = pack(plan_bundle(write(tmp_path / "other" / "o.pov", "sphere { 0, 1 }\n")))
    cache.ensure(bundle_hash(fetched), lambda: fetched)       # a new download sweeps first
    assert fresh.exists() and not later.exists()


def test_copy_for_render_is_a_real_copy(tmp_path):
    data = pack(make_tree(tmp_path / "src"))
    cached = BundleCache(tmp_path / "cache").ensure(bundle_hash(data), lambda: data)
    work = copy_for_render(cached, tmp_path / "strip-1")
    (work / "inc" / "tex.png").write_bytes(b"scribbled")
    (work / "new.txt").write_text("written by the scene")
    assert (cached / "inc" / "tex.png").read_bytes() == bytes(range(256)) * 4
    assert not (cached / "new.txt").exists()
    with pytest.raises(FileExistsError):
        copy_for_render(cached, work)


# -- the files a scene writes (farm/scenefiles.py) ----------------------------------------------------

_ORDERS = st.tuples(st.integers(0, 5), st.integers(0, 500))


@given(st.lists(st.tuples(st.sampled_from(["a.html", "b/c.txt", "d.inc"]), _ORDERS, st.binary(max_size=8)),
                max_size=12))
def test_scene_files_keep_each_names_latest_version(arrivals):
    from farm import scenefiles

    kept: dict = {}
    for name, order, data in arrivals:
        kept, left_out = scenefiles.merge(kept, scenefiles.unpack(scenefiles.pack({name: data}, order)))
        assert left_out == []
    for name in kept:
        assert kept[name][0] == max(order for n, order, _ in arrivals if n == name)
    assert scenefiles.unpack(scenefiles.pack_kept(kept)) == kept


def test_scene_files_are_bounded_and_named_like_bundle_members():
    from farm import scenefiles

    many = {f"f{i}.txt": b"x" for i in range(scenefiles.MAX_FILES + 1)}
    with pytest.raises(FarmError, match="more than"):
        scenefiles.pack(many)
    kept, left_out = scenefiles.merge({}, {name: ((1, 1), data) for name, data in many.items()})
    assert len(kept) == scenefiles.MAX_FILES and len(left_out) == 1
    for name in ("../x", "/abs", "a\\b", "c:d"):
        with pytest.raises(FarmError) as err:
            scenefiles.pack({name: b""})
        assert err.value.code is Code.BAD_ARGUMENT
    with pytest.raises(FarmError, match="not a readable zip"):
        scenefiles.unpack(b"PK\x03\x04 not a zip")
    assert scenefiles.unpack(b"") == {}        # what jobs.scene_files answers when the scene wrote nothing
