#!/usr/bin/env python3
"""Writes the sample DMARC aggregate reports in this folder, in the formats the big
receivers send (content synthetic: example.com, documentation IP ranges, SES-like
54.240.0.0/18 sources). Deterministic: run it again and git shows no change.

  google.com!example.com!B!E.zip      Google: one XML in a zip (attached as application/zip)
  microsoft.eml                       Microsoft: multipart mail, .xml.gz attachment
  yahoo.com!example.com!B!E.xml.gz    Yahoo: gzip
  dmarcbis.xml                        the DMARCbis aggregate format (xmlns dmarc-2.0, np=, testing=)
  billion-laughs.xml, external-entity.xml   hostile: refused for their DOCTYPE
"""
import base64, gzip, io, zipfile

DAY = 86400
B = 1795824000  # 2026-11-28 00:00:00 UTC


def record(ip, count, dkim_ok, spf_ok, dkim, spf, disposition="none", reason=None, ns=""):
    dk = "".join(
        f"""
      <dkim>
        <domain>{d}</domain>
        <selector>{s}</selector>
        <result>{r}</result>
      </dkim>"""
        for d, s, r in dkim
    )
    sp = "".join(
        f"""
      <spf>
        <domain>{d}</domain>
        <scope>mfrom</scope>
        <result>{r}</result>
      </spf>"""
        for d, r in spf
    )
    why = f"""
        <reason>
          <type>{reason}</type>
        </reason>""" if reason else ""
    return f"""
  <record>
    <row>
      <source_ip>{ip}</source_ip>
      <count>{count}</count>
      <policy_evaluated>
        <disposition>{disposition}</disposition>
        <dkim>{'pass' if dkim_ok else 'fail'}</dkim>
        <spf>{'pass' if spf_ok else 'fail'}</spf>{why}
      </policy_evaluated>
    </row>
    <identifiers>{ns}
      <header_from>example.com</header_from>
    </identifiers>
    <auth_results>{dk}{sp}
    </auth_results>
  </record>"""


def rfc7489(org, email, rid, begin, end, records, extra=""):
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <report_metadata>
    <org_name>{org}</org_name>
    <email>{email}</email>{extra}
    <report_id>{rid}</report_id>
    <date_range>
      <begin>{begin}</begin>
      <end>{end}</end>
    </date_range>
  </report_metadata>
  <policy_published>
    <domain>example.com</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>none</p>
    <sp>none</sp>
    <pct>100</pct>
  </policy_published>{''.join(records)}
</feedback>
"""


ses = [("example.com", "s1", "pass"), ("amazonses.com", "ug7nbtf4gccmlpwj322ax3p6ow6yfsug", "pass")]
ses_spf = [("eu-west-1.amazonses.com", "pass")]
forged = [("example.com", "fail")]

# Google: one XML in a zip named org!domain!begin!end.
g_begin, g_end = B, B + DAY - 1
google = rfc7489(
    "google.com", "noreply-dmarc-support@google.com", "4417320957291860437", g_begin, g_end,
    [record("54.240.3.10", 9800, True, False, ses, ses_spf),
     record("203.0.113.9", 28, False, False, [], forged)],
    extra="\n    <extra_contact_info>https://support.google.com/a/answer/2466580</extra_contact_info>",
)
gname = f"google.com!example.com!{g_begin}!{g_end}"
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    info = zipfile.ZipInfo(gname + ".xml", date_time=(2026, 11, 29, 6, 12, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, google)
open(gname + ".zip", "wb").write(buf.getvalue())

# Microsoft: a multipart mail with the XML gzipped, base64, as Outlook.com sends it.
m_begin, m_end = B, B + DAY
microsoft = rfc7489(
    "Outlook.com", "dmarcreport@microsoft.com", "a3c9e5d1f0b24e7c8f6d2b1a9e8c7d6f", m_begin, m_end,
    [record("54.240.3.11", 2500, True, False, ses, ses_spf),
     record("203.0.113.9", 3, False, False, [("example.com", "", "none")], forged)],
).replace("<feedback>", '<feedback xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n  <version>1.0</version>', 1)
mname = f"enterprise.protection.outlook.com!example.com!{m_begin}!{m_end}.xml.gz"
gz = gzip.compress(microsoft.encode(), mtime=0)
b64 = base64.encodebytes(gz).decode().replace("\n", "\r\n")
eml = f"""Return-Path: <dmarcreport@microsoft.com>\r
Received: from EUR05-DB8-obe.outbound.protection.outlook.com (mail-db8eur05on2101.outbound.protection.outlook.com [40.107.20.101])\r
 by mx.example.com with ESMTPS id 4ABCD1234 for <dmarc-reports@example.com>; Sun, 29 Nov 2026 04:21:33 +0000\r
From: "DMARC Aggregate Report" <dmarcreport@microsoft.com>\r
To: <dmarc-reports@example.com>\r
Subject: Report Domain: example.com Submitter: enterprise.protection.outlook.com Report-ID: a3c9e5d1f0b24e7c8f6d2b1a9e8c7d6f\r
Date: Sun, 29 Nov 2026 04:21:30 +0000\r
Message-ID: <a3c9e5d1f0b24e7c8f6d2b1a9e8c7d6f@microsoft.com>\r
MIME-Version: 1.0\r
Content-Type: multipart/mixed; boundary="_mpm_3f6c2b8e9d1a4c5b_"\r
\r
--_mpm_3f6c2b8e9d1a4c5b_\r
Content-Type: text/plain; charset="us-ascii"\r
Content-Transfer-Encoding: 7bit\r
\r
This is a DMARC aggregate report from Microsoft Corporation. For more information about DMARC see https://dmarc.org\r
\r
--_mpm_3f6c2b8e9d1a4c5b_\r
Content-Type: application/gzip\r
Content-Transfer-Encoding: base64\r
Content-ID: <a3c9e5d1f0b24e7c@microsoft.com>\r
Content-Description: {mname}\r
Content-Disposition: attachment; filename="{mname}"\r
\r
{b64}\r
--_mpm_3f6c2b8e9d1a4c5b_--\r
"""
open("microsoft.eml", "wb").write(eml.encode())

# Yahoo: gzip, named as Yahoo names it.
y_begin, y_end = B + DAY, B + 2 * DAY - 1
yahoo = rfc7489(
    "Yahoo", "dmarchelp@yahooinc.com", "1795910400.601284", y_begin, y_end,
    [record("54.240.3.12", 70, True, False, ses, ses_spf),
     record("198.51.100.7", 2, True, False, [("example.com", "s1", "pass")], [("lists.example.org", "pass")],
            reason="mailing_list")],
)
open(f"yahoo.com!example.com!{y_begin}!{y_end}.xml.gz", "wb").write(gzip.compress(yahoo.encode(), mtime=0))

# DMARCbis (draft-ietf-dmarc-aggregate-reporting): namespace, version, generator, np, testing.
d_begin, d_end = B + DAY, B + 2 * DAY
dmarcbis = f"""<?xml version="1.0" encoding="UTF-8"?>
<feedback xmlns="urn:ietf:params:xml:ns:dmarc-2.0">
  <version>1.0</version>
  <report_metadata>
    <org_name>receiver.example</org_name>
    <email>dmarc-reports@receiver.example</email>
    <report_id>rx-2026-11-29-example.com</report_id>
    <date_range>
      <begin>{d_begin}</begin>
      <end>{d_end}</end>
    </date_range>
    <generator>receiver.example DMARC 2.0</generator>
  </report_metadata>
  <policy_published>
    <domain>example.com</domain>
    <p>none</p>
    <sp>none</sp>
    <np>reject</np>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <discovery_method>treewalk</discovery_method>
    <testing>n</testing>
  </policy_published>
  <record>
    <row>
      <source_ip>2001:db8::25</source_ip>
      <count>100</count>
      <policy_evaluated>
        <disposition>pass</disposition>
        <dkim>pass</dkim>
        <spf>pass</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <envelope_from>example.com</envelope_from>
      <header_from>example.com</header_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>example.com</domain>
        <selector>s1</selector>
        <result>pass</result>
        <human_result>signature verified</human_result>
      </dkim>
      <spf>
        <domain>example.com</domain>
        <scope>mfrom</scope>
        <result>pass</result>
      </spf>
    </auth_results>
  </record>
</feedback>
"""
open("dmarcbis.xml", "w").write(dmarcbis)

laughs = ['<!ENTITY lol0 "lol">'] + [
    f'<!ENTITY lol{i} "{("&lol%d;" % (i - 1)) * 10}">' for i in range(1, 10)
]
open("billion-laughs.xml", "w").write(
    '<?xml version="1.0"?>\n<!DOCTYPE feedback [\n  ' + "\n  ".join(laughs) + "\n]>\n"
    + google.split("\n", 1)[1].replace("<org_name>google.com</org_name>", "<org_name>&lol9;</org_name>")
)
open("external-entity.xml", "w").write(
    '<?xml version="1.0"?>\n<!DOCTYPE feedback [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>\n'
    + google.split("\n", 1)[1].replace("<org_name>google.com</org_name>", "<org_name>&xxe;</org_name>")
)
