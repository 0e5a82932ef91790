"""pynetdicom asks a twistd node with C-GET for a study it holds in JPEG-LS Lossless and
JPEG Lossless, proposing CT Image Storage in Implicit VR Little Endian only: the node decodes
each instance and sends it so (``[node] decompress``, lossless by default).

The instances are made by DCMTK (dcmcjpls, dcmcjpeg) from one pydicom CT and stored by DCMTK
storescu in their own syntax; what pynetdicom receives is checked with pydicom.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from tests.interop.conftest import _finish_node, dcmtk, run, start_node, tiny_ct

pytestmark = pytest.mark.interop

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def test_pynetdicom_c_get_in_implicit_vr_only_gets_the_compressed_instances_decoded(tmp_path):
    study = str(generate_uid())
    files = []
    for tool, propose, name in (("dcmcjpls", "-xt", "jls"), ("dcmcjpeg", "-xs", "jpegll")):
        plain = tmp_path / f"{name}-plain.dcm"
        tiny_ct(study=study).save_as(plain, enforce_file_format=True)
        files.append((tmp_path / f"{name}.dcm", propose))
        made = run([dcmtk(tool), str(plain), str(files[-1][0])])
        assert made.returncode == 0, made.stderr
    node = start_node(tmp_path)
    received = []

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append((event.context.transfer_syntax, ds))
        return 0x0000

    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CT_IMAGE_STORAGE, [ImplicitVRLittleEndian])
    try:
        for path, propose in files:
            stored = run([dcmtk("storescu"), propose, "-aec", "DIMSEKIT", "127.0.0.1", str(node.port), str(path)])
            assert stored.returncode == 0, stored.stdout + stored.stderr
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT",
                             ext_neg=[build_role(CT_IMAGE_STORAGE, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        assert assoc.is_established
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = study
            responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
        finally:
            assoc.release()
    finally:
        ae.shutdown()
        _finish_node(node)
    final = responses[-1][0]
    assert final.Status == 0x0000, final
    assert final.NumberOfCompletedSuboperations == 2
    by_uid = {ds.SOPInstanceUID: (syntax, ds) for syntax, ds in received}
    for path, _propose in files:
        original = dcmread(path)
        syntax, ds = by_uid[original.SOPInstanceUID]
        assert syntax == ImplicitVRLittleEndian
        np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)
