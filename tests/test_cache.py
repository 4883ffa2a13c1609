"""The loader's cache of bundles loaded by URL (``ml3core.portable.BundleCache``), against a real
``ml3 serve``: revalidation by ETag (304), the cached copy when the server is down, ML3_OFFLINE=1,
and a corrupted cache entry refused by its checksum and fetched again."""

import json
import urllib.error
import urllib.request
import warnings

import pytest
import torch
from conftest import free_port, register_loss

from app.db.session import get_sessionmaker
from ml3core import LossBundleError, load_loss, portable

PRED, TARGET, X = torch.linspace(-2, 2, 9), torch.linspace(-1, 1, 9), torch.zeros(9)


@pytest.fixture(scope="module")
def loss_url(server):
    Session = get_sessionmaker(f"sqlite:///{(server.data_dir / 'ml3.db').resolve()}")
    register_loss(Session, "cached", seed=1)
    return f"{server.url}/v1/losses/cached:1"


@pytest.fixture
def requests(monkeypatch):
    """Every request the loader makes: (headers, status), 304 included."""
    seen = []
    real = urllib.request.urlopen

    def urlopen(req, *args, **kwargs):
        headers = {k.lower(): v for k, v in req.header_items()}
        try:
            resp = real(req, *args, **kwargs)
        except urllib.error.HTTPError as e:
            seen.append((headers, e.code))
            raise
        seen.append((headers, resp.status))
        return resp

    monkeypatch.setattr(portable.urllib.request, "urlopen", urlopen)
    return seen


def value(loss) -> float:
    return float(loss(PRED, TARGET, x=X))


def test_the_second_load_revalidates_by_etag_and_uses_the_cache(tmp_path, loss_url, requests):
    first = load_loss(loss_url, cache_dir=tmp_path)
    assert len(requests) == 1 and "if-none-match" not in requests[0][0] and requests[0][1] == 200
    sha = first.spec["sha256"]
    assert (tmp_path / "bundles" / f"{sha}.zip").is_file()  # keyed by the bundle's sha256 (the ETag)
    [entry] = [json.loads(p.read_text()) for p in (tmp_path / "urls").iterdir()]
    assert entry["url"] == loss_url + "/artifact" and entry["sha256"] == sha

    second = load_loss(loss_url, cache_dir=tmp_path)
    assert requests[1] == ({**requests[1][0], "if-none-match": f'"{sha}"'}, 304)
    assert value(second) == value(first)


def test_ml3_cache_sets_the_directory_and_false_turns_it_off(tmp_path, monkeypatch, loss_url, requests):
    monkeypatch.setenv("ML3_CACHE", str(tmp_path / "env"))
    load_loss(loss_url)
    assert len(list((tmp_path / "env" / "bundles").iterdir())) == 1
    load_loss(loss_url, cache_dir=False)
    assert [status for _, status in requests] == [200, 200] and "if-none-match" not in requests[1][0]


def test_offline_loads_from_the_cache_without_a_request(tmp_path, monkeypatch, loss_url, requests):
    online = load_loss(loss_url, cache_dir=tmp_path)
    monkeypatch.setenv("ML3_OFFLINE", "1")
    assert value(load_loss(loss_url, cache_dir=tmp_path)) == value(online)
    with pytest.raises(LossBundleError, match="ML3_OFFLINE=1 and no cached copy of .*: load it once"):
        load_loss(loss_url.replace("cached:1", "other"), cache_dir=tmp_path)
    with pytest.raises(LossBundleError, match="ML3_OFFLINE=1 and cache_dir=False"):
        load_loss(loss_url, cache_dir=False)
    assert len(requests) == 1  # the online load only


@pytest.mark.parametrize("damage", ["zip", "spec", "index"])
def test_a_corrupted_cache_entry_is_refused_and_fetched_again(tmp_path, loss_url, requests, damage):
    good = load_loss(loss_url, cache_dir=tmp_path)
    [path] = (tmp_path / "bundles").iterdir()
    if damage == "zip":  # a flipped byte in the middle of the file
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "spec":  # a well-formed zip whose loss.json was edited: the bundle's own checksum fails
        import io
        import zipfile
        with zipfile.ZipFile(path) as zf:
            files = {n: zf.read(n) for n in zf.namelist()}
        spec = json.loads(files["loss.json"])
        spec["training"]["inner_lr"] = 1.0
        files["loss.json"] = json.dumps(spec).encode()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for n, d in files.items():
                zf.writestr(n, d)
        path.write_bytes(buf.getvalue())
        [index] = (tmp_path / "urls").iterdir()  # even with the index's zip checksum rewritten to match
        entry = json.loads(index.read_text())
        entry["zip_sha256"] = __import__("hashlib").sha256(buf.getvalue()).hexdigest()
        index.write_text(json.dumps(entry))
    else:
        [index] = (tmp_path / "urls").iterdir()
        index.write_text("{not json")
    again = load_loss(loss_url, cache_dir=tmp_path)
    assert [status for _, status in requests] == [200, 200]  # fetched whole, no If-None-Match
    assert "if-none-match" not in requests[1][0]
    assert value(again) == value(good)
    load_loss(loss_url, cache_dir=tmp_path)  # the cache holds a good copy again
    assert requests[2][1] == 304


def test_unreachable_server_without_a_cached_copy_still_names_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1/losses/x"
    with pytest.raises(LossBundleError, match=f"GET {url}/artifact: cannot reach the server"):
        load_loss(url, cache_dir=tmp_path)


def test_server_down_loads_the_last_cached_copy_with_a_warning(tmp_path, server, loss_url):
    """Last in this module: it stops the module's server."""
    online = load_loss(loss_url, cache_dir=tmp_path)
    server.stop()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        offline = load_loss(loss_url, cache_dir=tmp_path)
    assert value(offline) == value(online)
    [w] = caught
    text = str(w.message)
    assert "\n" not in text and "cannot reach the server" in text and f"using the copy of {loss_url}" in text
    assert w.filename == __file__  # the warning points at the caller's load_loss line
    with pytest.raises(LossBundleError, match="cannot reach the server"):  # another URL: nothing cached
        load_loss(loss_url.replace("cached:1", "cached:2"), cache_dir=tmp_path)
