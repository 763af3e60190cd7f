import { LabIcon } from '@jupyterlab/ui-components';

/** A coordinator linked to four hospital sites; `jp-icon3` follows the light/dark theme. */
const FEDERATION_SVG = `<svg xmlns="http://www.w3.org/2000/svg"
  width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161" stroke="#616161">
    <path fill="none" stroke-width="1.6" d="M12 12 5 5M12 12l7-7M12 12l-7 7M12 12l7 7"/>
    <circle cx="12" cy="12" r="3.4" stroke="none"/>
    <circle cx="4.5" cy="4.5" r="2.6" stroke="none"/>
    <circle cx="19.5" cy="4.5" r="2.6" stroke="none"/>
    <circle cx="4.5" cy="19.5" r="2.6" stroke="none"/>
    <circle cx="19.5" cy="19.5" r="2.6" stroke="none"/>
  </g>
</svg>`;

export const federationIcon = new LabIcon({
  name: '@fedhem/lab:federation',
  svgstr: FEDERATION_SVG
});
