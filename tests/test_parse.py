"""Parsing every MovieLens layout into one schema, and rejecting bad rows with useful messages."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from mfrec.data.datasets import get_spec
from mfrec.errors import DataError
from mfrec.data.parse import GENRES_100K, NO_GENRES, read_dataset

RATINGS_HEADER = "userId,movieId,rating,timestamp\n"
MOVIES_CSV = 'movieId,title,genres\n1,"American President, The (1995)",Comedy|Drama\n2,B (1990),\n'


def write_csv_dataset(folder, ratings_body: str, header: str = RATINGS_HEADER):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(header + ratings_body)
    (folder / "movies.csv").write_text(MOVIES_CSV)
    return folder


def parse_error(folder, spec_name="ml-latest-small") -> str:
    with pytest.raises(DataError) as err:
        read_dataset(folder, get_spec(spec_name))
    return str(err.value)


def test_real_zip_counts_and_schema(shared_zip):
    parsed = read_dataset(shared_zip, get_spec("ml-latest-small"))
    r, m = parsed.ratings, parsed.movies
    assert len(r) == 100_836 and r["userId"].nunique() == 610
    assert r["movieId"].nunique() == 9_724 and len(m) == 9_742
    assert r.dtypes.astype(str).to_dict() == {
        "userId": "int32", "movieId": "int32", "rating": "float32", "timestamp": "int64"}
    assert m["movieId"].dtype == np.int32 and list(m.columns) == ["movieId", "title", "genres"]
    assert parsed.report["duplicates_removed"] == 0 and parsed.report["ratings"] == 100_836
    assert m.loc[m["movieId"] == 1, "title"].item() == "Toy Story (1995)"
    assert set(np.unique(r["rating"])) <= set(np.arange(1, 11) / 2)


def test_ml100k_layout_with_latin1_titles(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t874965758\n1\t2\t3\t876893171\n2\t1\t4\t888550871\n")
    flags_1 = ["0"] * 19
    flags_1[GENRES_100K.index("Animation")] = flags_1[GENRES_100K.index("Children's")] = "1"
    flags_2 = ["0"] * 19
    lines = [
        "|".join(["1", "Toy Story (1995)", "01-Jan-1995", "", "http://x?Toy%20Story", *flags_1]),
        "|".join(["2", "Café Flore (1995)", "01-Jan-1995", "", "http://x", *flags_2]),
    ]
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    parsed = read_dataset(folder, get_spec("ml-100k"))
    assert parsed.ratings["rating"].tolist() == [5.0, 3.0, 4.0]
    assert parsed.ratings["timestamp"].dtype == np.int64
    movies = parsed.movies.set_index("movieId")
    assert movies.loc[1, "genres"] == "Animation|Children's"
    assert movies.loc[2, "title"] == "Café Flore (1995)" and movies.loc[2, "genres"] == NO_GENRES
    assert parsed.report["users"] == 2 and parsed.report["rating_scale"] == [1.0, 5.0]


def test_ml1m_layout_from_zip_with_folder(tmp_path):
    ratings = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    movies = ("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
              "661::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n"
              "3::Misérables, Les (1995)::Drama|Musical\n")
    path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ml-1m/ratings.dat", ratings)
        zf.writestr("ml-1m/movies.dat", movies.encode("latin-1"))
    parsed = read_dataset(path, get_spec("ml-1m"))
    assert parsed.ratings[["userId", "movieId"]].values.tolist() == [[1, 661], [1, 1193], [2, 1193]]
    titles = dict(zip(parsed.movies["movieId"], parsed.movies["title"]))
    assert titles[661] == "Star Wars: Episode IV - A New Hope (1977)"
    assert titles[3] == "Misérables, Les (1995)"
    assert parsed.report["catalogue_movies"] == 3 and parsed.report["rated_movies"] == 2


def test_ml1m_bad_row_reports_line(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::1::5::9\n1::abc::5::9\n")
    (folder / "movies.dat").write_text("1::A (1990)::Drama\n")
    msg = parse_error(folder, "ml-1m")
    assert "non-integer movieId: 1 row(s)" in msg and "line 2: '1::abc::5::9'" in msg


def test_missing_column_is_named(tmp_path):
    folder = write_csv_dataset(tmp_path / "d", "1,1,9\n", header="userId,movieId,timestamp\n")
    msg = parse_error(folder)
    assert "missing required column(s) rating" in msg and "ratings.csv" in msg


def test_non_numeric_id_reports_line_and_content(tmp_path):
    folder = write_csv_dataset(tmp_path / "d", "1,1,4.0,9\n1,x2,4.0,9\nabc,3,4.0,9\n")
    msg = parse_error(folder)
    assert "ratings.csv: 2 bad row(s)" in msg and "nothing was loaded" in msg
    assert "non-integer movieId: 1 row(s), e.g. line 3: '1,x2,4.0,9'" in msg
    assert "non-integer userId: 1 row(s), e.g. line 4: 'abc,3,4.0,9'" in msg


def test_rating_off_scale_and_off_grid(tmp_path):
    folder = write_csv_dataset(tmp_path / "d", "1,1,4.0,9\n1,2,5.5,9\n1,3,0.0,9\n1,4,3.7,9\n")
    msg = parse_error(folder)
    assert "rating outside 0.5..5.0: 2 row(s), e.g. line 3: '1,2,5.5,9'; line 4: '1,3,0.0,9'" in msg
    assert "rating not a multiple of 0.5: 1 row(s), e.g. line 5: '1,4,3.7,9'" in msg


def test_whole_star_scale_of_ml100k(tmp_path):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t3.5\t9\n1\t2\t0\t9\n")
    (folder / "u.item").write_text("|".join(["1", "A", "", "", "", *["0"] * 19]) + "\n")
    msg = parse_error(folder, "ml-100k")
    assert "rating not a multiple of 1.0: 1 row(s), e.g. line 1: '1\\t1\\t3.5\\t9'" in msg
    assert "rating outside 1.0..5.0: 1 row(s), e.g. line 2:" in msg


def test_ids_out_of_range(tmp_path):
    folder = write_csv_dataset(tmp_path / "d", "1,1,4.0,9\n-3,1,4.0,9\n1,3000000000,4.0,9\n")
    msg = parse_error(folder)
    assert "userId out of range 0..2147483647: 1 row(s), e.g. line 3: '-3,1,4.0,9'" in msg
    assert "movieId out of range 0..2147483647: 1 row(s), e.g. line 4:" in msg


def test_undecodable_text_is_a_data_error(tmp_path):
    folder = write_csv_dataset(tmp_path / "d", "1,1,4.0,9\n")
    (folder / "movies.csv").write_bytes(b"movieId,title,genres\n1,Caf\xe9 (1990),Drama\n")
    msg = parse_error(folder)
    assert "movies.csv: cannot be parsed" in msg and "UTF8" in msg.replace("UTF-8", "UTF8")


def test_nan_and_empty_values(tmp_path):
    folder = write_csv_dataset(tmp_path / "d", "1,1,NaN,9\n1,2,,9\n1,3,4.0,\n")
    msg = parse_error(folder)
    assert "missing or NaN rating: 2 row(s), e.g. line 2: '1,1,NaN,9'; line 3: '1,2,,9'" in msg
    assert "missing or NaN timestamp: 1 row(s), e.g. line 4: '1,3,4.0,'" in msg


def test_wrong_field_count_and_blank_lines_keep_line_numbers(tmp_path):
    folder = write_csv_dataset(tmp_path / "d", "1,1,4.0,9\n\n1,2,4.0\n\n1,3,9.0,9\n")
    msg = parse_error(folder)
    assert "wrong number of fields (expected 4): 1 row(s), e.g. line 4: '1,2,4.0'" in msg
    assert "rating outside 0.5..5.0: 1 row(s), e.g. line 6: '1,3,9.0,9'" in msg


def test_examples_capped_at_five_with_full_count(tmp_path):
    body = "".join(f"1,{i},9.0,9\n" for i in range(1, 13))
    msg = parse_error(write_csv_dataset(tmp_path / "d", body))
    assert "rating outside 0.5..5.0: 12 row(s)" in msg
    assert "line 6:" in msg and "line 7:" not in msg


def test_duplicates_keep_latest_and_are_counted(tmp_path):
    body = "2,1,3.0,50\n1,1,2.0,10\n1,1,4.5,30\n1,1,1.0,20\n1,2,5.0,5\n2,1,4.0,40\n"
    parsed = read_dataset(write_csv_dataset(tmp_path / "d", body), get_spec("ml-latest-small"))
    r = parsed.ratings
    assert r[["userId", "movieId", "rating", "timestamp"]].values.tolist() == [
        [1, 1, 4.5, 30], [1, 2, 5.0, 5], [2, 1, 3.0, 50]]
    assert parsed.report["duplicates_removed"] == 3
    assert parsed.report["ratings_rows_read"] == 6 and parsed.report["ratings"] == 3
    assert parsed.report["duplicate_examples"] == [[1, 1], [2, 1]]


def test_duplicate_timestamp_tie_keeps_later_line(tmp_path):
    parsed = read_dataset(write_csv_dataset(tmp_path / "d", "1,1,2.0,10\n1,1,3.5,10\n"))
    assert parsed.ratings["rating"].tolist() == [3.5]


def test_layout_must_match_dataset(shared_zip):
    with pytest.raises(DataError, match="expects ratings.dat"):
        read_dataset(shared_zip, get_spec("ml-1m"))


def test_empty_genres_and_quoted_titles(tmp_path):
    parsed = read_dataset(write_csv_dataset(tmp_path / "d", "1,1,4.0,9\n"))
    movies = parsed.movies.set_index("movieId")
    assert movies.loc[1, "title"] == "American President, The (1995)"
    assert movies.loc[2, "genres"] == NO_GENRES
