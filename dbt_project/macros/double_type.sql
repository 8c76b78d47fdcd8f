{#- A 64-bit float on every warehouse: DuckDB's `double`; elsewhere dbt's cross-database `type_float()`
    (`float`, which is 8 bytes on PostgreSQL but 4 bytes on DuckDB, hence not used there). -#}
{% macro mlplatform_double() -%}
  {%- if target.type == 'duckdb' -%}double{%- else -%}{{ dbt.type_float() }}{%- endif -%}
{%- endmacro %}
