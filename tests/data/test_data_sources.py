"""Lookup order: root, BNLAB_DATA, cache, system, download; explicit directories used alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnlab.data import FILES, DatasetError, locate, sources, user_cache_dir


@pytest.fixture
def dirs(isolated, make_tiny):
    """Complete tiny sets in root, env, cache and system directories."""
    base = isolated
    made = {kind: base / kind for kind in ("root", "env", "system")}
    made["cache"] = base / "xdg" / "bnlab" / "fashion-mnist"
    for directory in made.values():
        make_tiny(directory)
    assert user_cache_dir() == made["cache"] and sources.SYSTEM_DIR == made["system"]
    return made


def test_root_comes_first(dirs, monkeypatch):
    monkeypatch.setenv("BNLAB_DATA", str(dirs["env"]))
    location = locate(dirs["root"])
    assert location.kind == "root" and location.directory == dirs["root"]
    assert location.paths == {s.name: dirs["root"] / s.archive for s in FILES}
    assert location.searched == (("root", dirs["root"]),) and location.explicit


def test_env_comes_second(dirs, monkeypatch):
    monkeypatch.setenv("BNLAB_DATA", str(dirs["env"]))
    location = locate()
    assert (location.kind, location.directory, location.explicit) == ("env", dirs["env"], True)


def test_cache_comes_before_system(dirs):
    location = locate()
    assert (location.kind, location.directory, location.explicit) == ("cache", dirs["cache"], False)


def test_system_is_used_when_the_cache_is_incomplete(dirs):
    (dirs["cache"] / "t10k-labels-idx1-ubyte.gz").unlink()
    location = locate()
    assert (location.kind, location.directory) == ("system", dirs["system"])
    assert location.searched == (("cache", dirs["cache"]), ("system", dirs["system"]))


@pytest.mark.parametrize("kind", ["root", "env"])
def test_explicit_directory_never_falls_back(dirs, monkeypatch, kind):
    (dirs[kind] / "train-images-idx3-ubyte.gz").unlink()
    if kind == "env":
        monkeypatch.setenv("BNLAB_DATA", str(dirs["env"]))
    with pytest.raises(DatasetError) as info:
        locate(dirs["root"] if kind == "root" else None, download=False)
    assert info.value.file == str(dirs[kind])
    assert "3 of 4 files, train-images-idx3-ubyte.gz missing" in info.value.found


def test_explicit_directory_downloads_into_itself_and_reports_failure(dirs):
    (dirs["root"] / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as info:  # the isolated config's mirror is a closed port
        locate(dirs["root"], download=True)
    assert info.value.file == str(dirs["root"] / "t10k-images-idx3-ubyte.gz")
    assert "127.0.0.1:9/t10k-images-idx3-ubyte.gz" in info.value.found
    assert "bnlab data download" in info.value.fix


def test_nothing_found_names_every_place_searched(isolated):
    with pytest.raises(DatasetError) as info:
        locate(download=False)
    message = str(info.value)
    assert str(user_cache_dir()) in message and str(isolated / "system") in message
    assert "apt install dataset-fashion-mnist" in message and "--data-dir" in message


def test_root_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="found a file"):
        locate(tmp_path / "file")


def test_uncompressed_files_are_found_and_gz_preferred(tmp_path, make_tiny):
    make_tiny(tmp_path / "raw", gz=False)
    assert locate(tmp_path / "raw").paths["train-images-idx3-ubyte"].name == (
        "train-images-idx3-ubyte"
    )
    make_tiny(tmp_path / "raw", gz=True)
    assert all(p.suffix == ".gz" for p in locate(tmp_path / "raw").paths.values())


def test_partial_download_leftovers_are_not_files(tmp_path, make_tiny):
    tiny = make_tiny(tmp_path / "d")
    victim = tiny.directory / "train-labels-idx1-ubyte.gz"
    victim.rename(tiny.directory / ".train-labels-idx1-ubyte.gz.abc123.part")
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz missing"):
        locate(tiny.directory)


def test_cache_dir_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert user_cache_dir() == tmp_path / "x" / "bnlab" / "fashion-mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # XDG: relative paths are invalid
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "bnlab" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "bnlab" / "fashion-mnist"


def _unsearchable(monkeypatch, directory):
    """Make ``directory`` behave as one this process may not search (root ignores chmod)."""
    real = sources.os.stat

    def stat(path, *args, **kwargs):
        if directory in Path(path).parents:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(sources.os, "stat", stat)


def test_an_unreadable_explicit_directory_is_a_clear_error(dirs, monkeypatch):
    _unsearchable(monkeypatch, dirs["root"])
    with pytest.raises(DatasetError) as info:
        locate(dirs["root"])
    assert info.value.expected == "a readable directory" and "Permission" in info.value.found


def test_an_unreadable_cache_is_passed_over(dirs, monkeypatch):
    _unsearchable(monkeypatch, dirs["cache"])
    assert locate().kind == "system"


def test_an_unreadable_cache_is_named_when_nothing_is_found(isolated, monkeypatch):
    _unsearchable(monkeypatch, user_cache_dir())
    with pytest.raises(DatasetError) as info:
        locate(download=True)
    assert "Permission" in info.value.found and "unreadable cache" in info.value.found


def test_an_empty_root_is_not_the_current_directory():
    with pytest.raises(ValueError, match="empty"):
        locate("")


def test_an_explicit_directory_whose_name_is_too_long_is_a_clear_error(isolated, monkeypatch):
    long_name = isolated / ("a" * 300)  # ENAMETOOLONG from stat (Path.exists lets it through)
    for use in ("root", "env"):
        if use == "env":
            monkeypatch.setenv("BNLAB_DATA", str(long_name))
        with pytest.raises(DatasetError) as info:
            locate(long_name if use == "root" else None)
        assert info.value.expected == "a directory that can be searched"
        assert "File name too long" in info.value.found


def _homeless(monkeypatch):
    """As a container run under a uid without a passwd entry, with HOME unset."""
    monkeypatch.delenv("HOME")
    monkeypatch.delenv("XDG_CACHE_HOME")

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))


def test_without_a_home_directory_an_explicit_root_still_loads(isolated, make_tiny,
                                                               monkeypatch):
    from bnlab.data import DecodedCache, load_data_fashion_mnist

    make_tiny(isolated / "root")
    _homeless(monkeypatch)
    assert user_cache_dir() is None and DecodedCache.default() is None
    train, test = load_data_fashion_mnist(4, root=isolated / "root")
    images, labels = next(iter(train))
    assert images.shape[0] == labels.shape[0] == 4


def test_without_a_home_directory_nothing_found_says_where_to_put_the_data(isolated,
                                                                           monkeypatch):
    _homeless(monkeypatch)
    with pytest.raises(DatasetError) as info:
        locate(download=True)
    assert "no home directory" in info.value.found and "--data-dir" in info.value.found


def test_without_a_home_directory_a_tilde_path_is_a_clear_error(isolated, monkeypatch):
    _homeless(monkeypatch)
    monkeypatch.setattr(Path, "expanduser", _no_home_expanduser)
    monkeypatch.setenv("BNLAB_DATA", "~/fashion")
    for root in (None, "~/data"):
        with pytest.raises(DatasetError) as info:
            locate(root)
        assert "no home directory" in info.value.found


def _no_home_expanduser(self):
    if str(self).startswith("~"):
        raise RuntimeError("Could not determine home directory.")
    return self
