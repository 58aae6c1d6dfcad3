"""The docstring examples of the package and of its type stubs run and pass."""

import ast
import doctest
import os

import gated_attention as ga


def test_package_docstrings():
    result = doctest.testmod(ga)
    assert result.attempted > 0 and result.failed == 0


def test_stub_examples():
    path = os.path.join(os.path.dirname(ga.__file__), "_native.pyi")
    tree = ast.parse(open(path, encoding="utf-8").read())
    runner, examples = doctest.DocTestRunner(), 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                test = doctest.DocTestParser().get_doctest(doc, {}, getattr(node, "name", "module"), path, 0)
                examples += len(test.examples)
                runner.run(test)
    assert examples >= 8 and runner.failures == 0


def test_native_docstrings():
    """The extension's own docstrings (help(ga.attention)) and their examples."""
    assert "window" in ga.attention.__doc__ and "(q, k, v, *, layout='bshd'" in ga.attention.__text_signature__
    assert "(q, k_values, k_scales, v_values, v_scales, *, layout='bshd'" in ga.attention_int8.__text_signature__
    for f in (ga.attention, ga.reference_attention, ga.quantize_int8, ga.dequantize_int8, ga.attention_int8):
        test = doctest.DocTestParser().get_doctest(f.__doc__, {}, f.__name__, None, 0)
        runner = doctest.DocTestRunner()
        runner.run(test)
        assert test.examples and runner.failures == 0
