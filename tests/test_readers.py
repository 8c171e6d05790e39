"""Each ratings format parses; each bad file is rejected with one line naming file and line."""

from __future__ import annotations

import numpy as np
import pytest

from deepcf.data.readers import dedupe_latest, read_ratings, read_titles
from deepcf.errors import DataError
from tests.helpers import write

CSV = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n7,31,4.5,1\n"


@pytest.mark.parametrize(
    "name,text",
    [
        ("ratings.csv", CSV),
        ("ratings.dat", "1::31::2.5::1260759144\n1::1029::3::1260759179\n7::31::4.5::1\n"),
        ("u.data", "1\t31\t2.5\t1260759144\n1\t1029\t3\t1260759179\n7\t31\t4.5\t1\n"),
        ("ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                     "1\t31\t2.5\t1260759144\n1\t1029\t3\t1260759179\n7\t31\t4.5\t1\n"),
        ("crlf.csv", CSV.replace("\n", "\r\n")),
        ("no_ts.csv", "user_id,item_id,rating\n1,31,2.5\n1,1029,3\n7,31,4.5\n"),
    ],
)
def test_formats_parse_to_the_same_table(tmp_path, name, text):
    t = read_ratings(write(tmp_path / name, text), 0.5, 5)
    assert t.user.tolist() == [1, 1, 7]
    assert t.item.tolist() == [31, 1029, 31]
    np.testing.assert_allclose(t.rating, [2.5, 3.0, 4.5])
    assert t.rating.dtype == np.float32 and t.user.dtype == np.int64
    if "no_ts" not in name:
        assert t.timestamp.tolist() == [1260759144, 1260759179, 1]
    else:
        assert t.timestamp is None


def test_duplicates_keep_the_latest_timestamp(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,5,1,300\n1,5,4,900\n1,5,2,100\n2,5,3,1\n"
    t, dropped = dedupe_latest(read_ratings(write(tmp_path / "d.csv", text), 1, 5))
    assert dropped == 2
    assert sorted(zip(t.user.tolist(), t.rating.tolist())) == [(1, 4.0), (2, 3.0)]


def test_titles_from_movies_csv_and_u_item(tmp_path):
    movies = 'movieId,title,genres\n1,Toy Story (1995),Animation\n2,"Heat, The (1995)",Crime\n'
    assert read_titles(write(tmp_path / "movies.csv", movies)) == {
        1: "Toy Story (1995)", 2: "Heat, The (1995)"}
    (tmp_path / "u.item").write_bytes(
        "1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n2|Caf\xe9 (1995)|01-Jan-1995||x|0|1\n"
        .encode("latin-1"))
    assert read_titles(tmp_path / "u.item") == {1: "Toy Story (1995)", 2: "Caf\xe9 (1995)"}


@pytest.mark.parametrize(
    "text,message",
    [
        ("", r"bad\.csv: file is empty"),
        ("\n\n", r"bad\.csv: file is empty"),
        ("userId,movieId,rating,timestamp\n", r"bad\.csv: no ratings \(header only\)"),
        ("userId,movieId,rating\n1,2,3\n1,2,3,4,5\n", r"bad\.csv: malformed: .*line 3"),
        ("userId,film,rating\n1,2,3\n", r"bad\.csv: missing column\(s\) movie; header has "
                                        r"userId, film, rating"),
        ("userId,movieId,rating\n1,2,3\n1,3,good\n", r"bad\.csv:3: rating 'good' is not a "
                                                     r"number"),
        ("userId,movieId,rating\n1,2,3\n1,3,\n", r"bad\.csv:3: rating is missing or NaN"),
        ("userId,movieId,rating\n1,2,3\n1,3,NaN\n", r"bad\.csv:3: rating is missing or NaN"),
        ("userId,movieId,rating\n1,2,3\n1,3,7\n", r"bad\.csv:3: rating 7 is outside the "
                                                  r"declared range \[0\.5, 5\]"),
        ("userId,movieId,rating\n1,2,3\n1,3,-1\n", r"bad\.csv:3: rating -1 is outside"),
        ("userId,movieId,rating\nx,2,3\n", r"bad\.csv:2: user id 'x' is not a number"),
        ("userId,movieId,rating\n1,2.5,3\n", r"bad\.csv:2: movie id 2\.5 is not an integer id"),
        ("1,2\n3,4\n", r"bad\.csv: expected at least 3 columns"),
    ],
)
def test_bad_files_give_one_clear_line(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=message) as e:
        read_ratings(path, 0.5, 5)
    assert "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: no such file"):
        read_ratings(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a directory"):
        read_ratings(tmp_path)
