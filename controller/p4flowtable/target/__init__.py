"""Switch targets p4flowtable can run on besides BMv2 and Tofino."""
